package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"golang.org/x/term"
)

// reportImport writes what an import did beyond its counts: to stdout the
// keys it re-activated, to stderr the revoked keys it left revoked, what it
// cannot know when the key set was empty, and a warning for a cache file as
// its source. It returns the error for the records it could not import.
func reportImport(stdout, stderr io.Writer, res keyops.ImportResult, file string, to stores.RecordStore) error {
	if res.Snapshot {
		fmt.Fprintf(stderr, "Warning: %s is a server's cache_file, not an export: its records lack last_used_at, rotated_from and the members this plugin does not know, and their times may be spelled otherwise than in the key set (then reported as conflicts below). Prefer an export (caddy apikey export); use a cache_file only when nothing else is left.\n", file)
	}
	if len(res.Reactivated) > 0 {
		fmt.Fprintf(stdout, "Re-activated %d keys revoked in %s, as --reactivate asked (their copies in %s are active):\n  %s\n", len(res.Reactivated), to, file, strings.Join(res.Reactivated, "\n  "))
	}
	if len(res.KeptRevoked) > 0 {
		fmt.Fprintf(stderr, "%d keys revoked in %s are active in %s (an older export?); they stay revoked. To make them active again, run import again with --reactivate:\n  %s\n", len(res.KeptRevoked), to, file, strings.Join(res.KeptRevoked, "\n  "))
	}
	if res.TargetEmpty && res.ActiveAdded > 0 {
		fmt.Fprintf(stderr, "Note: %s held no keys, so import cannot tell which keys were revoked since %s was written: its %d active keys are all active now. If it is an older export or backup, revoke again every key revoked after it was made (caddy apikey revoke %s <id>).\n", to, file, res.ActiveAdded, to.Flags())
	}
	if len(res.Conflicts) > 0 {
		return fmt.Errorf("%d keys not imported:\n  %s", len(res.Conflicts), strings.Join(res.Conflicts, "\n  "))
	}
	return nil
}

// progress shows, on a terminal, what a long command is doing: a status
// line for each step, redrawn every progressEvery with the time the step
// has taken, and left with its result when the step ends. Anywhere else
// (a pipe, a file, a log) it shows nothing. A nil *progress shows nothing.
type progress struct {
	w io.Writer // a terminal; nil: show nothing

	mu    sync.Mutex
	what  string        // the step under way; "" for none
	start time.Time     // when it began
	stop  chan struct{} // closed to stop its redraws
	wg    sync.WaitGroup
}

// progressEvery is how often a step's status line is redrawn.
const progressEvery = 250 * time.Millisecond

// newProgress returns the progress of a command whose messages go to w:
// shown if w is a terminal.
func newProgress(w io.Writer) keyops.Progress {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &progress{w: w}
	}
	return nil
}

// Step begins a step, ending the one under way.
func (p *progress) Step(format string, args ...any) {
	if p == nil {
		return
	}
	p.End("")
	p.mu.Lock()
	defer p.mu.Unlock()
	p.what, p.start, p.stop = fmt.Sprintf(format, args...), time.Now(), make(chan struct{})
	p.draw()
	stop := p.stop
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				p.mu.Lock()
				p.draw()
				p.mu.Unlock()
			}
		}
	}()
}

// draw redraws the status line; p.mu is held.
func (p *progress) draw() {
	if p.what != "" {
		fmt.Fprintf(p.w, "\r\x1b[K%s... %s", p.what, time.Since(p.start).Truncate(time.Second))
	}
}

// End ends the step under way, if any, leaving its line with result (if
// not "") and the time it took.
func (p *progress) End(result string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.what == "" {
		p.mu.Unlock()
		return
	}
	close(p.stop)
	took := time.Since(p.start).Round(100 * time.Millisecond)
	if result != "" {
		result = ": " + result
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s%s (%s)\n", p.what, result, took)
	p.what = ""
	p.mu.Unlock()
	p.wg.Wait()
}

// Interrupt runs f, which writes lines of its own, with the status line
// cleared, and draws it again after.
func (p *progress) Interrupt(f func()) {
	if p == nil {
		f()
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.what != "" {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	f()
	p.draw()
}
