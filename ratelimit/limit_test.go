package ratelimit

import (
	"strings"
	"testing"
	"time"
)

func TestParseLimit(t *testing.T) {
	good := []struct {
		in   string
		want Limit
		out  string
	}{
		{"100/1m", Limit{100, time.Minute}, "100/1m"},
		{"10/1s", Limit{10, time.Second}, "10/1s"},
		{"5000/1d", Limit{5000, 24 * time.Hour}, "5000/1d"},
		{"1/366d", Limit{1, MaxWindow}, "1/366d"},
		{"1000000000/1h", Limit{MaxRequests, time.Hour}, "1000000000/1h"},
		{"7/90s", Limit{7, 90 * time.Second}, "7/90s"},
		{"7/1m30s", Limit{7, 90 * time.Second}, "7/90s"},
		{"3/0.5d", Limit{3, 12 * time.Hour}, "3/12h"},
		{" 20 / 60m ", Limit{20, time.Hour}, "20/1h"},
	}
	for _, c := range good {
		got, err := ParseLimit(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseLimit(%q) = %v, %v; want %v", c.in, got, err, c.want)
			continue
		}
		if got.String() != c.out {
			t.Errorf("%q: String() = %q, want %q", c.in, got.String(), c.out)
		}
		if back, err := ParseLimit(got.String()); err != nil || back != got {
			t.Errorf("%q: String() does not read back: %v, %v", c.in, back, err)
		}
	}
	bad := []struct{ in, want string }{
		{"100", "want requests/window"},
		{"", "want requests/window"},
		{"0/1m", "from 1 to 1000000000"},
		{"-5/1m", "from 1 to 1000000000"},
		{"+5/1m", "from 1 to 1000000000"},
		{"1000000001/1m", "from 1 to 1000000000"},
		{"1e3/1m", "from 1 to 1000000000"},
		{"99999999999999999999/1m", "from 1 to 1000000000"},
		{"10/", "not a duration"},
		{"10/1x", "not a duration"},
		{"10/0s", "from 1s to 366d"},
		{"10/-1m", "from 1s to 366d"},
		{"10/500ms", "from 1s to 366d"},
		{"10/367d", "from 1s to 366d"},
		{"10/1.5s", "whole number of seconds"},
	}
	for _, c := range bad {
		_, err := ParseLimit(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseLimit(%q) = %v, want an error with %q", c.in, err, c.want)
		}
	}
}

func TestCheckLimits(t *testing.T) {
	if err := CheckLimits(nil); err != nil {
		t.Errorf("no limits: %v", err)
	}
	if err := CheckLimits([]Limit{{10, time.Second}, {100, time.Minute}}); err != nil {
		t.Errorf("two limits: %v", err)
	}
	nine := make([]Limit, 9)
	for i := range nine {
		nine[i] = Limit{10, time.Duration(i+1) * time.Second}
	}
	for _, c := range []struct {
		limits []Limit
		want   string
	}{
		{nine, "at most 8 rate limits, not 9"},
		{[]Limit{{10, time.Second}, {0, time.Minute}}, "rate limit 2: requests must be"},
		{[]Limit{{10, time.Minute}, {20, 60 * time.Second}}, "rate limits 1 and 2 have the same window, 1m"},
		{[]Limit{{10, time.Millisecond}}, "rate limit 1: window must be from 1s to 366d, not 1ms"},
	} {
		if err := CheckLimits(c.limits); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CheckLimits(%v) = %v, want %q", c.limits, err, c.want)
		}
	}
}

func TestSeconds(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int64
	}{{0, 0}, {-time.Second, 0}, {1, 1}, {time.Second, 1}, {time.Second + 1, 2}, {59*time.Second + 1, 60}} {
		if got := Seconds(c.d); got != c.want {
			t.Errorf("Seconds(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	if got := (Decision{RetryAfter: 0}).RetryAfterSeconds(); got != 1 {
		t.Errorf("RetryAfterSeconds of 0 = %d, want at least 1", got)
	}
	if got := (Decision{RetryAfter: 1500 * time.Millisecond}).RetryAfterSeconds(); got != 2 {
		t.Errorf("RetryAfterSeconds of 1.5s = %d, want 2", got)
	}
}
