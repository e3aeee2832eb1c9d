// Command report summarises the runs of the end-to-end benchmark
// (bench/run.sh): it reads the runs CSV and prints a Markdown table of the
// median requests/s, p50 and p99 latency and Caddy CPU time per request of
// each endpoint, each with its ratio to the unprotected endpoint, then checks
// the targets for the apikey endpoint.
//
//	go run ./bench/report [-strict] bench/results/<run>/runs.csv
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Targets for the apikey endpoint, relative to the unprotected one.
const (
	minThroughputRatio = 0.95 // keeps at least 95% of the requests/s
	maxCPURatio        = 1.05 // adds at most 5% CPU time per request
)

const baseline = "nothing"

type run struct {
	round    int
	endpoint string
	rps      float64
	p50, p99 float64 // microseconds
	cpu      float64 // Caddy CPU microseconds per request
}

func main() {
	strict := flag.Bool("strict", false, "exit with status 1 if the apikey endpoint misses a target")
	flag.Parse()
	if flag.NArg() != 1 {
		log.Fatal("usage: report [-strict] runs.csv")
	}
	runs, order, err := readRuns(flag.Arg(0))
	if err != nil {
		log.Fatal(err)
	}
	by := map[string][]run{}
	for _, r := range runs {
		by[r.endpoint] = append(by[r.endpoint], r)
	}
	base, ok := by[baseline]
	if !ok {
		log.Fatalf("no runs of the %q endpoint", baseline)
	}
	med := func(rs []run, f func(run) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return median(v)
	}
	fRPS := func(r run) float64 { return r.rps }
	fP50 := func(r run) float64 { return r.p50 }
	fP99 := func(r run) float64 { return r.p99 }
	fCPU := func(r run) float64 { return r.cpu }
	bRPS, bP50, bP99, bCPU := med(base, fRPS), med(base, fP50), med(base, fP99), med(base, fCPU)

	fmt.Printf("Medians over %d rounds (ratio: endpoint / %s).\n\n", len(base), baseline)
	fmt.Println("| Endpoint | Requests/s | ratio | p50 latency | ratio | p99 latency | ratio | Caddy CPU per request | ratio |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, ep := range order {
		rs := by[ep]
		rps, p50, p99, cpu := med(rs, fRPS), med(rs, fP50), med(rs, fP99), med(rs, fCPU)
		fmt.Printf("| %s | %s | %.2f | %s | %.2f | %s | %.2f | %.1f µs | %.2f |\n",
			ep, thousands(rps), rps/bRPS, latency(p50), p50/bP50, latency(p99), p99/bP99, cpu, cpu/bCPU)
	}

	// Ratios of runs in the same round, taken a few seconds apart, are
	// less exposed to slow drifts in the machine's load than ratios of
	// medians.
	fmt.Printf("\nPaired ratios (median over rounds of endpoint / %s in the same round):\n\n", baseline)
	for _, ep := range order {
		if ep == baseline {
			continue
		}
		rpsR, cpuR := pairedRatios(base, by[ep], fRPS), pairedRatios(base, by[ep], fCPU)
		fmt.Printf("- %s: requests/s %.3f, CPU per request %.3f\n", ep, median(rpsR), median(cpuR))
	}

	ak, ok := by["apikey"]
	if !ok {
		return
	}
	tput := med(ak, fRPS) / bRPS
	cpu := med(ak, fCPU) / bCPU
	tputPaired := median(pairedRatios(base, ak, fRPS))
	cpuPaired := median(pairedRatios(base, ak, fCPU))
	pass := tput >= minThroughputRatio && cpu <= maxCPURatio
	fmt.Printf("\nTargets for apikey:\n\n")
	fmt.Printf("- throughput at least %.0f%% of %s: %.1f%% (paired %.1f%%) %s\n",
		minThroughputRatio*100, baseline, tput*100, tputPaired*100, verdict(tput >= minThroughputRatio))
	fmt.Printf("- CPU time per request at most +%.0f%%: %+.1f%% (paired %+.1f%%) %s\n",
		(maxCPURatio-1)*100, (cpu-1)*100, (cpuPaired-1)*100, verdict(cpu <= maxCPURatio))
	if *strict && !pass {
		os.Exit(1)
	}
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// readRuns reads the runs CSV written by run.sh, and returns the runs and
// the endpoints in their first order of appearance.
func readRuns(path string) ([]run, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	cr := csv.NewReader(f)
	header, err := cr.Read()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %v", path, err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	for _, need := range []string{"round", "endpoint", "rps", "p50_us", "p99_us", "cpu_us_per_req"} {
		if _, ok := col[need]; !ok {
			return nil, nil, fmt.Errorf("%s: no %q column", path, need)
		}
	}
	var runs []run
	var order []string
	seen := map[string]bool{}
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %v", path, err)
		}
		num := func(name string) float64 {
			v, err := strconv.ParseFloat(rec[col[name]], 64)
			if err != nil {
				log.Fatalf("%s:%d: %s: %v", path, line, name, err)
			}
			return v
		}
		r := run{
			round:    int(num("round")),
			endpoint: rec[col["endpoint"]],
			rps:      num("rps"),
			p50:      num("p50_us"),
			p99:      num("p99_us"),
			cpu:      num("cpu_us_per_req"),
		}
		runs = append(runs, r)
		if !seen[r.endpoint] {
			seen[r.endpoint] = true
			order = append(order, r.endpoint)
		}
	}
	// The baseline first, the others in their order of appearance.
	sort.SliceStable(order, func(i, j int) bool { return order[i] == baseline && order[j] != baseline })
	return runs, order, nil
}

// pairedRatios returns, for each round in which both were measured, the
// ratio of f for the endpoint's run to f for the baseline's run.
func pairedRatios(base, other []run, f func(run) float64) []float64 {
	b := map[int]float64{}
	for _, r := range base {
		b[r.round] = f(r)
	}
	var out []float64
	for _, r := range other {
		if v, ok := b[r.round]; ok && v > 0 {
			out = append(out, f(r)/v)
		}
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

// latency formats microseconds as wrk does, with a unit.
func latency(us float64) string {
	switch {
	case us >= 1e6:
		return fmt.Sprintf("%.2f s", us/1e6)
	case us >= 1e3:
		return fmt.Sprintf("%.2f ms", us/1e3)
	}
	return fmt.Sprintf("%.0f µs", us)
}

// thousands formats n rounded, with thin spaces between thousands.
func thousands(n float64) string {
	s := strconv.FormatInt(int64(n+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString(" ")
		}
		b.WriteRune(c)
	}
	return b.String()
}
