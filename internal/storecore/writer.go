package storecore

import "time"

// Ask hands a request to one of a store's goroutines on ch and waits for
// its answer, at most wait in all. answered is false if none came: the
// goroutine was busy past wait, or the store stopped (stopped closed).
func Ask[T any](ch chan chan T, stopped <-chan struct{}, wait time.Duration) (answer T, answered bool) {
	reply, deadline := make(chan T, 1), time.After(wait)
	select {
	case ch <- reply:
		select {
		case answer = <-reply:
			return answer, true
		case <-deadline:
		}
	case <-stopped:
	case <-deadline:
	}
	return answer, false
}

// UsageWriter runs a store's usage writer until stop is closed: it calls
// write(false) every min(usage interval, MaxFlushPeriod), so that the uses
// that are due share one write, and write(true), for every pending use,
// when asked on flushNow and as it stops.
func UsageWriter(stop <-chan struct{}, flushNow chan chan struct{}, leases *Leases, now func() time.Time, write func(all bool)) {
	t := time.NewTicker(TickInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-stop:
			write(true)
			return
		case reply := <-flushNow:
			write(true)
			reply <- struct{}{}
		case <-t.C:
			iv := leases.Current().Usage
			if !iv.Off && now().Sub(last) >= min(iv.Every, MaxFlushPeriod) {
				last = now()
				write(false)
			}
		}
	}
}
