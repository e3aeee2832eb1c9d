package usagecount

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// FlushEvery is how often a Flusher writes the usage counts of a key set
// to its store.
const FlushEvery = 10 * time.Second

// maxPendingCounts bounds the counts kept for a store that cannot be
// written to: past it, the oldest are dropped, and that is logged.
const maxPendingCounts = 1 << 20

// Flusher counts a key set's requests (keyset.CountTracker) and writes
// the counts to its store in the background, every FlushEvery and when it
// stops; a write that fails is tried again with the next, and logged
// once.
type Flusher struct {
	keyset.CountTracker
	name   string
	writer Writer
	keep   atomic.Int64 // retention, nanoseconds: the newest handler's

	mu      sync.Mutex // one write at a time
	pending []Row
	buf     []keyset.Count
	failing bool
	done    chan struct{}
	stopped chan struct{}
}

// NewFlusher starts the flusher of the key store named name (for its
// logs), writing to w.
func NewFlusher(name string, w Writer) *Flusher {
	c := &Flusher{name: name, writer: w, done: make(chan struct{}), stopped: make(chan struct{})}
	c.keep.Store(int64(DefaultRetention))
	go func() {
		defer close(c.stopped)
		t := time.NewTicker(FlushEvery)
		defer t.Stop()
		for {
			select {
			case <-c.done:
				c.Flush()
				return
			case <-t.C:
				c.Flush()
			}
		}
	}()
	return c
}

// Flush writes the counts made since the last write, and those a failed
// write left, to the store.
func (c *Flusher) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = c.Collect(c.buf[:0])
	if len(c.buf) > 0 {
		hour := Hour(time.Now())
		for _, n := range c.buf {
			c.pending = append(c.pending, Row{ID: n.ID, Hour: hour, Result: Results[n.Result], N: n.N})
		}
	}
	if len(c.pending) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := c.writer.AddUsageCounts(ctx, c.pending, time.Duration(c.keep.Load()))
	cancel()
	log := caddy.Log().Named("http.handlers.apikey")
	if err != nil {
		if !c.failing {
			c.failing = true
			log.Error("cannot write the keys' usage counts to the key store; they are kept in memory and written once it works again",
				zap.String("key_store", c.name), zap.Error(err))
		}
		if over := len(c.pending) - maxPendingCounts; over > 0 {
			log.Warn("dropping the oldest usage counts kept for the key store, which still cannot be written to",
				zap.String("key_store", c.name), zap.Int("dropped", over))
			c.pending = append(c.pending[:0], c.pending[over:]...)
		}
		return
	}
	if c.failing {
		c.failing = false
		log.Info("writing the keys' usage counts to the key store works again", zap.String("key_store", c.name))
	}
	c.pending = c.pending[:0]
}

// Stop writes what is left and stops.
func (c *Flusher) Stop() {
	close(c.done)
	<-c.stopped
}

// SetRetention sets how long the store keeps each hour's counts.
func (c *Flusher) SetRetention(keep time.Duration) { c.keep.Store(int64(keep)) }
