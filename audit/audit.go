// Package audit is the audit log of the changes made to a key store
// through `caddy apikey` or the admin API: one Entry per change of one
// key (who, when, what changed), never a raw key or a hash. A store writes
// the entries of an edit durably before it commits the edit (see
// stores.Edit), so a change that could not be logged is not made; the
// file store keeps them as JSON Lines beside the key file, the Redis store
// in a stream.
package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The actions.
const (
	Create     = "create"      // a key made (caddy apikey add, POST /apikey/keys)
	Revoke     = "revoke"      // a key revoked
	Rotate     = "rotate"      // a key replaced by a new one: the entry's key is the old one
	Import     = "import"      // a key imported (one entry per key added or reactivated)
	RateLimits = "rate_limits" // a key's own rate limits set or dropped
	Quota      = "quota"       // a key's quota set or dropped, or units of it granted for a period
)

// Who made a change: through the admin API, its request's remote address
// and, when Caddy's remote admin authenticated it by a client certificate,
// that certificate's subject; through a command, the OS user and host.
type Who struct {
	Via        string `json:"via"` // "admin_api" or "command"
	RemoteAddr string `json:"remote_addr,omitempty"`
	Identity   string `json:"identity,omitempty"`
	User       string `json:"user,omitempty"`
	Host       string `json:"host,omitempty"`
}

// The Via of Who.
const (
	ViaAdminAPI = "admin_api"
	ViaCommand  = "command"
)

// Command is who runs this process as a command: the OS user (its name,
// or its uid if it has none) and the host name.
func Command() Who {
	w := Who{Via: ViaCommand}
	if u, err := user.Current(); err == nil {
		w.User = u.Username
	} else {
		w.User = fmt.Sprintf("uid %d", os.Getuid())
	}
	w.Host, _ = os.Hostname()
	return w
}

// String is who, for people.
func (w Who) String() string {
	switch {
	case w.Via == ViaAdminAPI && w.Identity != "":
		return "admin API " + w.RemoteAddr + " (" + w.Identity + ")"
	case w.Via == ViaAdminAPI:
		return "admin API " + w.RemoteAddr
	case w.Via == ViaCommand:
		return w.User + "@" + w.Host
	}
	return "-"
}

// Entry is one change of one key.
type Entry struct {
	Time      string `json:"time"` // RFC 3339, UTC
	Action    string `json:"action"`
	KeyID     string `json:"key_id"`
	Label     string `json:"label"`
	KeyPrefix string `json:"key_prefix"`
	Who       Who    `json:"who"`
	// Changes says what changed, member by member: the new values
	// (revoked_at, rate_limits, ...), for a rotate new_id and
	// new_key_prefix too. Never a key or a hash.
	Changes map[string]any `json:"changes,omitempty"`
}

// Stamp sets the time of the entries that have none to now (in UTC, as
// RFC 3339), and their Who to who where they have none.
func Stamp(entries []Entry, now time.Time, who Who) {
	t := now.UTC().Format(time.RFC3339Nano)
	for i := range entries {
		if entries[i].Time == "" {
			entries[i].Time = t
		}
		if entries[i].Who == (Who{}) {
			entries[i].Who = who
		}
	}
}

// Append appends e to buf as one line of JSON.
func Append(buf []byte, e Entry) ([]byte, error) {
	data, err := json.Marshal(e)
	if err != nil {
		return buf, fmt.Errorf("encoding an audit entry: %w", err)
	}
	buf = append(buf, data...)
	return append(buf, '\n'), nil
}

// Decode reads one entry from its JSON.
func Decode(data []byte) (Entry, error) {
	var e Entry
	err := json.Unmarshal(data, &e)
	return e, err
}

// Filter picks entries.
type Filter struct {
	// Key, if not empty, keeps the entries of the key with this id or
	// key_prefix (for a rotate, the old key's or the new one's).
	Key string
	// Since, if not zero, keeps the entries made at or after it.
	Since time.Time
}

// Match reports whether f keeps e.
func (f Filter) Match(e Entry) bool {
	if f.Key != "" {
		newID, _ := e.Changes["new_id"].(string)
		newPrefix, _ := e.Changes["new_key_prefix"].(string)
		if !strings.EqualFold(e.KeyID, f.Key) && e.KeyPrefix != f.Key && !strings.EqualFold(newID, f.Key) && newPrefix != f.Key {
			return false
		}
	}
	if !f.Since.IsZero() {
		t, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil || t.Before(f.Since) {
			return false
		}
	}
	return true
}

// MaxLine bounds one line of an audit log.
const MaxLine = 64 << 10

// Read reads the entries of a JSON Lines audit log that f keeps, in their
// order. A last line without its newline (a write a crash cut short) is
// skipped; any other line that is not an entry is an error naming it.
func Read(r io.Reader, f Filter) ([]Entry, error) {
	var out []Entry
	br := bufio.NewReaderSize(r, MaxLine)
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return out, fmt.Errorf("line %d: longer than an audit entry may be", n)
		}
		if err == io.EOF {
			return out, nil // a last line without its newline: cut short
		}
		if err != nil {
			return out, err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		e, derr := Decode(line)
		if derr != nil {
			return out, fmt.Errorf("line %d: not an audit entry: %v", n, derr)
		}
		if f.Match(e) {
			out = append(out, e)
		}
	}
}

// ParseSince reads --since or ?since=: a time (RFC 3339) or a duration
// before now (24h, 7d, 30m).
func ParseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("since %q: want a time such as 2026-01-31T00:00:00Z or a duration before now such as 24h or 7d", s)
	}
	return now.Add(-d), nil
}
