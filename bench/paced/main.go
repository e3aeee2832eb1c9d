// Command paced sends requests with one API key at a fixed rate, open loop
// (each request at its planned time, whatever the answers before it), to
// one or more servers in phases, and records when each request was sent and
// answered and its status. It then counts the admitted requests (200) per
// fixed window of the limit, aligned on the Unix epoch as the server's
// windows are, and the most admitted in any sliding window of that length,
// and compares them with the limit. For bench/ratelimit.sh.
//
//	go run ./bench/paced -key raw-key.txt -rate 30 -align 1m -limit 600 -window 1m \
//	    -server http://127.0.0.1:8001/ -server http://127.0.0.1:8002/ \
//	    -phase 3m=1,2 -phase 3m=2 -tolerance 3 -out requests.csv
//
// A phase "3m=1,2" lasts 3 minutes and sends its requests to servers 1 and
// 2 in turn (numbered as -server is given). With -align 1m the first
// request goes out half a period after the next whole minute (at least 2 s
// from now), so that no planned request falls on a window's edge.
//
// Each request is placed in the window of the middle of its round trip;
// one whose round trip spans a window's edge is counted as "on an edge"
// (the server decided it on one side or the other). Only whole windows
// (the run covers them from start to end) are compared with the limit.
// Statuses other than 200 and 429, transport errors and a 429 without
// Retry-After make the exit status 1, after the report. The key is read
// from a file and never printed.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

type phase struct {
	spec    string
	length  time.Duration
	servers []int // indexes into the -server list
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, " ") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

// result is one request: planned and actual send time, answer time (unix
// ns), server index, status (0: transport error).
type result struct {
	plan, sent, recv int64
	server           int
	status           int
	retryAfter       bool
	err              string
}

func main() {
	keyPath := flag.String("key", "", "file holding the raw API key (one line)")
	rate := flag.Float64("rate", 30, "requests per second")
	align := flag.Duration("align", 0, "start just after the next multiple of this (0: now)")
	limit := flag.Int64("limit", 600, "the key's limit: requests per window")
	window := flag.Duration("window", time.Minute, "the limit's window")
	tolerance := flag.Float64("tolerance", 1, "allowed deviation of a whole window's admitted count from the limit, in percent")
	out := flag.String("out", "", "CSV file for every request (optional)")
	name := flag.String("name", "", "name of the run, for the report")
	var servers, phases multi
	flag.Var(&servers, "server", "URL of a server (repeatable; numbered from 1)")
	flag.Var(&phases, "phase", "DURATION=I,J,...: a phase sending to those servers in turn (repeatable)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("paced: ")

	if *keyPath == "" || len(servers) == 0 || len(phases) == 0 {
		log.Fatal("give -key, at least one -server and at least one -phase")
	}
	if *rate <= 0 || *limit < 1 || *window <= 0 || *tolerance < 0 {
		log.Fatal("-rate, -limit, -window must be positive and -tolerance not negative")
	}
	raw, err := os.ReadFile(*keyPath)
	if err != nil {
		log.Fatal(err)
	}
	key := strings.TrimSpace(string(raw))
	if key == "" || strings.ContainsAny(key, "\r\n") {
		log.Fatalf("%s must hold one key on one line", *keyPath)
	}
	var ps []phase
	var total time.Duration
	for _, spec := range phases {
		p, err := parsePhase(spec, len(servers))
		if err != nil {
			log.Fatal(err)
		}
		ps = append(ps, p)
		total += p.length
	}

	period := float64(time.Second) / *rate
	n := int(math.Floor(total.Seconds() * *rate))
	if n < 1 {
		log.Fatal("the phases are too short for one request")
	}
	res := make([]result, n)

	tr := &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	auth := "Bearer " + key

	now := time.Now()
	start := now
	if *align > 0 {
		start = now.Add(2 * time.Second).Truncate(*align).Add(*align)
	}
	start = start.Add(time.Duration(period / 2))
	startNS := start.UnixNano()
	if d := time.Until(start); d > 0 {
		log.Printf("%s: starting at %s (in %.0f s): %d requests at %g/s over %s", *name, start.UTC().Format("15:04:05.000"), d.Seconds(), n, *rate, total)
		time.Sleep(d)
	}

	var wg sync.WaitGroup
	ctx := context.Background()
	phaseEnd := ps[0].length
	pi, inPhase := 0, 0
	for i := 0; i < n; i++ {
		off := time.Duration(float64(i) * period)
		for off >= phaseEnd && pi < len(ps)-1 {
			pi++
			inPhase = 0
			phaseEnd += ps[pi].length
		}
		srv := ps[pi].servers[inPhase%len(ps[pi].servers)]
		inPhase++
		plan := startNS + int64(off)
		if d := time.Until(time.Unix(0, plan)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(r *result, url string) {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			req.Header.Set("Authorization", auth)
			r.sent = time.Now().UnixNano()
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.status = resp.StatusCode
				r.retryAfter = resp.Header.Get("Retry-After") != ""
			} else {
				r.err = err.Error()
			}
			r.recv = time.Now().UnixNano()
		}(&res[i], servers[srv])
		res[i].plan, res[i].server = plan, srv
	}
	wg.Wait()
	endNS := startNS + int64(total)

	if *out != "" {
		if err := writeCSV(*out, res); err != nil {
			log.Fatal(err)
		}
	}
	bad := report(os.Stdout, *name, res, ps, len(servers), startNS, endNS, *window, *limit, *tolerance, *rate)
	if bad != nil {
		log.Fatal(bad)
	}
}

func parsePhase(spec string, nservers int) (phase, error) {
	d, list, ok := strings.Cut(spec, "=")
	if !ok {
		return phase{}, fmt.Errorf("phase %q: want DURATION=I,J,...", spec)
	}
	length, err := time.ParseDuration(d)
	if err != nil || length <= 0 {
		return phase{}, fmt.Errorf("phase %q: bad duration %q", spec, d)
	}
	p := phase{spec: spec, length: length}
	for _, s := range strings.Split(list, ",") {
		i, err := strconv.Atoi(s)
		if err != nil || i < 1 || i > nservers {
			return phase{}, fmt.Errorf("phase %q: %q is not a server number from 1 to %d", spec, s, nservers)
		}
		p.servers = append(p.servers, i-1)
	}
	return p, nil
}

func writeCSV(path string, res []result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "plan_unix_ns,sent_unix_ns,recv_unix_ns,server,status,retry_after,error")
	for _, r := range res {
		fmt.Fprintf(w, "%d,%d,%d,%d,%d,%t,%q\n", r.plan, r.sent, r.recv, r.server+1, r.status, r.retryAfter, r.err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type windowCount struct {
	sent, admitted, refused, edge int
	byServer                      []int // admitted
	phases                        map[int]bool
}

// report prints the windows and the sliding maximum; it returns an error
// if any answer was neither 200 nor a 429 with Retry-After.
func report(w io.Writer, name string, res []result, ps []phase, nservers int, startNS, endNS int64, window time.Duration, limit int64, tolerance, rate float64) error {
	W := int64(window)
	wins := map[int64]*windowCount{}
	var admitted []int64
	var others, noRetry int
	var firstOther string
	var lateMax, rttMax int64
	var rtts []int64
	phaseOf := func(plan int64) int {
		var end int64 = startNS
		for i, p := range ps {
			end += int64(p.length)
			if plan < end {
				return i
			}
		}
		return len(ps) - 1
	}
	for _, r := range res {
		lateMax = max(lateMax, r.sent-r.plan)
		rtt := r.recv - r.sent
		rttMax = max(rttMax, rtt)
		rtts = append(rtts, rtt)
		mid := r.sent + rtt/2
		idx := floorDiv(mid, W)
		c := wins[idx]
		if c == nil {
			c = &windowCount{byServer: make([]int, nservers), phases: map[int]bool{}}
			wins[idx] = c
		}
		c.sent++
		c.phases[phaseOf(r.plan)] = true
		switch {
		case r.status == http.StatusOK:
			c.admitted++
			c.byServer[r.server]++
			admitted = append(admitted, mid)
			if floorDiv(r.sent, W) != floorDiv(r.recv, W) {
				c.edge++
			}
		case r.status == http.StatusTooManyRequests:
			c.refused++
			if !r.retryAfter {
				noRetry++
			}
		default:
			others++
			if firstOther == "" {
				firstOther = fmt.Sprintf("status %d %s", r.status, r.err)
			}
		}
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })

	fmt.Fprintf(w, "%s: %d requests at %g/s from %s to %s UTC; limit %d per %s, tolerance ±%g %%\n",
		name, len(res), rate, time.Unix(0, startNS).UTC().Format("15:04:05.000"), time.Unix(0, endNS).UTC().Format("15:04:05.000"), limit, window, tolerance)
	for i, p := range ps {
		fmt.Fprintf(w, "  phase %d: %s (servers %s)\n", i+1, p.length, serverList(p.servers))
	}
	fmt.Fprintf(w, "  round trip: median %.2f ms, p99 %.2f ms, max %.2f ms; latest send after its planned time: %.2f ms\n",
		ms(rtts[len(rtts)/2]), ms(rtts[len(rtts)*99/100]), ms(rttMax), ms(lateMax))
	idxs := make([]int64, 0, len(wins))
	for i := range wins {
		idxs = append(idxs, i)
	}
	sort.Slice(idxs, func(i, j int) bool { return idxs[i] < idxs[j] })
	fmt.Fprintf(w, "  %-19s %-6s %5s %8s %7s %7s %9s  %s\n", "window (UTC)", "phase", "sent", "admitted", "refused", "on edge", "vs limit", "admitted by server")
	var whole, missed int
	var worst float64
	for _, i := range idxs {
		c := wins[i]
		ws, we := i*W, (i+1)*W
		full := ws >= startNS-int64(float64(time.Second)/rate) && we <= endNS+int64(float64(time.Second)/rate)
		var phs []string
		for j := range ps {
			if c.phases[j] {
				phs = append(phs, strconv.Itoa(j+1))
			}
		}
		dev := "partial"
		if full {
			whole++
			d := 100 * float64(int64(c.admitted)-limit) / float64(limit)
			dev = fmt.Sprintf("%+.2f %%", d)
			if math.Abs(d) > math.Abs(worst) {
				worst = d
			}
			if math.Abs(d) > tolerance {
				missed++
				dev += " MISS"
			}
		}
		var by []string
		for s, n := range c.byServer {
			by = append(by, fmt.Sprintf("s%d %d", s+1, n))
		}
		fmt.Fprintf(w, "  %-19s %-6s %5d %8d %7d %7d %9s  %s\n",
			time.Unix(0, ws).UTC().Format("15:04:05")+"-"+time.Unix(0, we).UTC().Format("15:04:05"),
			strings.Join(phs, "+"), c.sent, c.admitted, c.refused, c.edge, dev, strings.Join(by, ", "))
	}
	// The most admitted in any [t, t+W): enough to start at each admitted
	// request.
	best, bestAt := 0, int64(0)
	for i, j := 0, 0; i < len(admitted); i++ {
		for j < len(admitted) && admitted[j] < admitted[i]+W {
			j++
		}
		if j-i > best {
			best, bestAt = j-i, admitted[i]
		}
	}
	fmt.Fprintf(w, "  whole windows: %d; worst %+.2f %% (%d outside ±%g %%)\n", whole, worst, missed, tolerance)
	if best > 0 {
		fmt.Fprintf(w, "  most admitted in any sliding %s: %d (%+.2f %%), from %s UTC (%.1f s into the run)\n",
			window, best, 100*float64(int64(best)-limit)/float64(limit), time.Unix(0, bestAt).UTC().Format("15:04:05.000"), float64(bestAt-startNS)/1e9)
	}
	fmt.Fprintf(w, "  RESULT %s whole=%d worst_pct=%+.2f missed=%d sliding_max=%d\n", name, whole, worst, missed, best)
	var errs []error
	if others > 0 {
		errs = append(errs, fmt.Errorf("%s: %d answers were neither 200 nor 429 (first: %s)", name, others, firstOther))
	}
	if noRetry > 0 {
		errs = append(errs, fmt.Errorf("%s: %d answers 429 had no Retry-After", name, noRetry))
	}
	return errors.Join(errs...)
}

func serverList(s []int) string {
	var b []string
	for _, i := range s {
		b = append(b, "s"+strconv.Itoa(i+1))
	}
	return strings.Join(b, ", ")
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
