package apikey

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testfleet"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// The fleet tests run several Caddy processes (see the testfleet package)
// on one real redis-server: the feature is about several servers.

func TestFleetSharesOneKeySet(t *testing.T) {
	testkeys.Slow(t, "several Caddy processes")
	r := testredis.Start(t)
	rs := redisRecords(t, r, "fleet:")
	first, _ := teststores.AddKey(t, rs, "first")
	fleet := testfleet.Start(t, r, 3, "")

	for _, c := range fleet {
		if got := c.Status(first); got != 200 {
			t.Fatalf("caddy %s: the first key got %d", c.Name, got)
		}
	}

	t.Run("add and revoke reach every server", func(t *testing.T) {
		raw, rec := teststores.AddKey(t, rs, "added")
		testfleet.WaitAll(t, fleet, raw, 200, time.Now())
		if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		testfleet.WaitAll(t, fleet, raw, 403, time.Now())
	})

	t.Run("propagation of 200 changes", func(t *testing.T) {
		var lat []time.Duration
		for i := range 200 {
			if i%2 == 0 {
				raw, _ := teststores.AddKey(t, rs, fmt.Sprintf("p%d", i))
				lat = append(lat, testfleet.WaitAll(t, fleet, raw, 200, time.Now()))
				continue
			}
			raw, rec := teststores.AddKey(t, rs, fmt.Sprintf("p%d", i))
			testfleet.WaitAll(t, fleet, raw, 200, time.Now())
			start := time.Now()
			if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
			lat = append(lat, testfleet.WaitAll(t, fleet, raw, 403, start))
		}
		slices.Sort(lat)
		t.Logf("propagation to all 3 servers over %d changes (ack by Redis to in force, seen by HTTP): p50 %s, p99 %s, max %s",
			len(lat), testfleet.Percentile(lat, 0.5), testfleet.Percentile(lat, 0.99), lat[len(lat)-1])
	})

	t.Run("usage from two servers is merged", func(t *testing.T) {
		raw, rec := teststores.AddKey(t, rs, "used")
		testfleet.WaitAll(t, fleet, raw, 200, time.Now())
		fleet[0].Status(raw)
		fleet[0].Reload()
		time.Sleep(1100 * time.Millisecond) // a later use: last-used times are kept to the second
		before := time.Now()
		fleet[1].Status(raw)
		fleet[1].Reload()
		records, _, err := rs.Read()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(records, func(d keyfile.Record) bool { return d.ID == rec.ID })
		if i < 0 || records[i].LastUsedAt == nil {
			t.Fatalf("no last_used_at for the used key")
		}
		at, _ := keyset.ParseTimestamp(*records[i].LastUsedAt)
		if at.Before(before.Add(-time.Second)) {
			t.Errorf("last_used_at = %s, want the second server's later use (after %s)", at, before)
		}
	})

	t.Run("adds racing usage writes lose nothing and resurrect nothing", func(t *testing.T) {
		var used []string
		for i := range 3 {
			raw, _ := teststores.AddKey(t, rs, fmt.Sprintf("busy%d", i))
			used = append(used, raw)
		}
		gone, goneRec := teststores.AddKey(t, rs, "to be deleted")
		testfleet.WaitAll(t, fleet, gone, 200, time.Now())
		for _, c := range fleet {
			c.Status(gone)
		}
		stopLoad := testfleet.UnderLoad(fleet, func(c *testfleet.Caddy) {
			for _, raw := range used {
				c.Status(raw)
			}
		})
		writesBefore := make([]float64, len(fleet))
		for i, c := range fleet {
			writesBefore[i] = c.UsageWrites()
		}
		// Deleted by hand while its uses are pending on every server.
		r.Do("HDEL", "{fleet:}records", goneRec.ID)
		var added []string
		var mu sync.Mutex
		var adders sync.WaitGroup
		bin := testfleet.Build(t)
		for a := range 3 {
			adders.Go(func() {
				for i := range 10 {
					// The command itself, as an operator runs it.
					out, err := exec.Command(bin, "apikey", "add", "--redis", r.URL, "--prefix", "fleet:", "--label", fmt.Sprintf("racer %d/%d", a, i)).Output()
					if err != nil {
						t.Errorf("caddy apikey add: %v", err)
						return
					}
					mu.Lock()
					added = append(added, strings.TrimSpace(string(out)))
					mu.Unlock()
				}
			})
		}
		adders.Wait()
		// Go on until every server has written last-used times during
		// the race (usage_interval 1s: a write a second while in use).
		for i, c := range fleet {
			testredis.Eventually(t, 10*time.Second, "caddy "+c.Name+" wrote no last-used times during the race", func() bool {
				return c.UsageWrites() > writesBefore[i]
			})
		}
		stopLoad()
		for _, c := range fleet {
			c.Reload() // flushes what is left
		}
		lost := 0
		for _, raw := range added {
			for _, c := range fleet {
				if c.Status(raw) != 200 {
					lost++
				}
			}
		}
		resurrected := 0
		if n, _ := r.Do("HEXISTS", "{fleet:}records", goneRec.ID).AsInt64(); n != 0 {
			resurrected++
		}
		t.Logf("%d adds (caddy apikey add, 3 at a time) racing usage writes from 3 servers: %d lost, %d resurrected", len(added), lost, resurrected)
		if len(added) != 30 || lost != 0 || resurrected != 0 {
			t.Fatalf("lost %d, resurrected %d", lost, resurrected)
		}
	})
}

func TestFleetSurvivesRedisKill(t *testing.T) {
	testkeys.Slow(t, "several Caddy processes")
	r := testredis.Start(t)
	rs := redisRecords(t, r, "fleet:")
	good, _ := teststores.AddKey(t, rs, "good")
	cacheDir := t.TempDir()
	cache := filepath.Join(cacheDir, "cache.json")
	fleet := testfleet.Start(t, r, 3, "")
	// One more, with a cache file, for the start without Redis below.
	cached := testfleet.StartCaddy(t, "cached", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t\tcache_file "+cache+"\n\t\t}")
	testredis.Eventually(t, 10*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	fleet = append(fleet, cached)

	bad, _ := keyops.GenerateKey()
	var ok200, wrong, fivexx, other atomic.Int64
	stopLoad := testfleet.UnderLoad(fleet, func(c *testfleet.Caddy) {
		switch c.Status(good) {
		case 200:
			ok200.Add(1)
		case 500, 502, 503, 504:
			fivexx.Add(1)
		default:
			other.Add(1)
		}
		if st := c.Status(bad); st == 200 {
			wrong.Add(1)
		} else if st >= 500 {
			fivexx.Add(1)
		}
	})
	time.Sleep(300 * time.Millisecond)
	r.Kill()
	time.Sleep(2 * time.Second) // under load with Redis dead
	stopLoad()
	t.Logf("under load with redis-server killed (-9): %d ok, %d 5xx, %d other, %d wrong key admitted", ok200.Load(), fivexx.Load(), other.Load(), wrong.Load())
	if fivexx.Load() != 0 || wrong.Load() != 0 || other.Load() != 0 {
		t.Fatalf("5xx %d, wrong key admitted %d, good key refused %d", fivexx.Load(), wrong.Load(), other.Load())
	}

	outer := t // the server started from the cache serves until the end
	t.Run("start with Redis down", func(t *testing.T) {
		// Without a cache file, the config load fails and names the URL.
		_, err := testfleet.LaunchCaddy(t, "no cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}")
		if err == nil || !strings.Contains(err.Error(), r.URL) {
			t.Fatalf("start without Redis and without cache: %v", err)
		}
		// With one, it starts and admits the keys it holds.
		c := testfleet.StartCaddy(outer, "from cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t\tcache_file "+cache+"\n\t\t}")
		if got := c.Status(good); got != 200 {
			t.Fatalf("started from the cache file: the good key got %d", got)
		}
		if got := c.Status(bad); got != 403 {
			t.Fatalf("started from the cache file: a wrong key got %d", got)
		}
		fleet = append(fleet, c)
	})

	// Redis comes back empty (no persistence): the servers keep their
	// keys; the key set is restored from the cache file (an export would
	// do as well), and every server catches up.
	r.Restart()
	rs = redisRecords(t, r, "fleet:")
	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := teststores.AddKey(t, rs, "after the restart")
	testfleet.WaitAll(t, fleet, fresh, 200, time.Now())
	for _, c := range fleet {
		if got := c.Status(good); got != 200 {
			t.Errorf("caddy %s: the good key got %d after the catch-up", c.Name, got)
		}
	}
}

// The key set's records evicted (here deleted, as allkeys-lru would) while
// its version and log remain: a running server keeps admitting its keys; a
// server restarted with a cache file serves from it, one without refuses to
// start, naming the cause; the key set restored from the cache file, every
// server takes a change again.
func TestFleetRecordsGone(t *testing.T) {
	testkeys.Slow(t, "several Caddy processes")
	r := testredis.Start(t)
	rs := redisRecords(t, r, "fleet:")
	good, _ := teststores.AddKey(t, rs, "good")
	cache := filepath.Join(t.TempDir(), "cache.json")
	block := "redis " + r.URL + " {\n\t\t\tprefix fleet:\n\t\t\tcache_file " + cache + "\n\t\t}"
	running := testfleet.StartCaddy(t, "running", block)
	testredis.Eventually(t, 10*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })

	r.Do("DEL", "{fleet:}records")
	if got := running.Status(good); got != 200 {
		t.Fatalf("the running server: the good key got %d", got)
	}

	restarted := testfleet.StartCaddy(t, "restarted", block)
	if got := restarted.Status(good); got != 200 {
		t.Fatalf("the server restarted with a cache file: the good key got %d", got)
	}
	_, err := testfleet.LaunchCaddy(t, "no cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}")
	if err == nil || !strings.Contains(err.Error(), "records are gone") {
		t.Fatalf("a server restarted without a cache file: %v, want a refusal naming the cause", err)
	}
	// Within the follower's next version check (about a second).
	testredis.Eventually(t, 10*time.Second, "the running server did not say that the records are gone", func() bool {
		return strings.Contains(running.Logs(), "records are gone")
	})
	if got := running.Status(good); got != 200 {
		t.Fatalf("the running server, once it saw the loss: the good key got %d", got)
	}

	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := teststores.AddKey(t, rs, "after the restore")
	testfleet.WaitAll(t, []*testfleet.Caddy{running, restarted}, fresh, 200, time.Now())
	testfleet.WaitAll(t, []*testfleet.Caddy{running, restarted}, good, 200, time.Now())
}
