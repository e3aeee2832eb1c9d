package storecore

import (
	"context"
	"sync"
	"time"
)

// Life is what a store's goroutines share from start to stop: the context
// that stopping cancels, the asks to refresh (re-read or sync the key set)
// and to flush (write every pending use now), and the wait for them to end.
// Both stores of this repository embed one, so that they start, answer and
// stop alike.
type Life struct {
	// Ctx is cancelled when the store stops: it ends blocking calls and
	// every loop.
	Ctx    context.Context
	cancel context.CancelFunc
	// RefreshNow and FlushNow carry the asks of AskRefresh and AskFlush to
	// the goroutine that serves each; it replies on the channel it gets.
	RefreshNow chan chan error
	FlushNow   chan chan struct{}
	done       chan struct{}
	stopOnce   sync.Once
}

// NewLife returns the life of a store that has not started yet.
func NewLife() *Life {
	l := &Life{RefreshNow: make(chan chan error), FlushNow: make(chan chan struct{}), done: make(chan struct{})}
	l.Ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// Go runs each of loops in a goroutine of its own; once all have returned
// it runs after (if not nil), and the store has stopped.
func (l *Life) Go(after func(), loops ...func()) {
	var wg sync.WaitGroup
	for _, loop := range loops {
		wg.Go(loop)
	}
	go func() {
		wg.Wait()
		if after != nil {
			after()
		}
		close(l.done)
	}()
}

// Stop cancels Ctx and waits at most wait for the goroutines to end; it
// reports whether they did. The first call also runs release (if not nil),
// whatever the wait's outcome: what the store holds for its whole life,
// such as its metrics, is let go once.
func (l *Life) Stop(wait time.Duration, release func()) bool {
	l.cancel()
	if release != nil {
		defer l.stopOnce.Do(release)
	}
	select {
	case <-l.done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Stopped reports whether the store has been told to stop.
func (l *Life) Stopped() bool { return l.Ctx.Err() != nil }

// AskRefresh asks for a refresh and returns its outcome; answered is false
// if none came within RefreshWait (the goroutine is busy) or the store
// stopped.
func (l *Life) AskRefresh() (err error, answered bool) {
	return Ask(l.RefreshNow, l.Ctx.Done(), RefreshWait)
}

// AskFlush asks for every pending use to be written now, and waits for it
// at most StopWait.
func (l *Life) AskFlush() { Ask(l.FlushNow, l.Ctx.Done(), StopWait) }

// Done is closed once the goroutines have ended.
func (l *Life) Done() <-chan struct{} { return l.done }
