package keyops

import (
	"strings"
	"testing"
	"time"
)

var cmdNow = time.Date(2026, 11, 25, 20, 14, 31, 123456000, time.UTC)

func TestParseExpiry(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"90d", cmdNow.Add(90 * 24 * time.Hour)},
		{"1d", cmdNow.Add(24 * time.Hour)},
		{"12h", cmdNow.Add(12 * time.Hour)},
		{"30m", cmdNow.Add(30 * time.Minute)},
		{"1h30m", cmdNow.Add(90 * time.Minute)},
		{" 7d ", cmdNow.Add(7 * 24 * time.Hour)},
		{"2027-01-31T00:00:00Z", time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)},
		{"2027-01-31T02:00:00+02:00", time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)},
		{"2027-01-31", time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)},
	} {
		got, err := parseExpiry(tc.in, cmdNow)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseExpiry(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"junk", "want a duration"},
		{"90", "want a duration"},
		{"90x", "want a duration"},
		{"d", "want a duration"},
		{"-5d", "positive"},
		{"0s", "positive"},
		{"2020-01-01T00:00:00Z", "in the past"},
		{"2026-11-25T20:14:31.123456Z", "in the past"}, // exactly now
		{"2026-11-25", "in the past"},
	} {
		_, err := parseExpiry(tc.in, cmdNow)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("parseExpiry(%q) error = %v, want one saying %q", tc.in, err, tc.wantErr)
		}
	}
}
