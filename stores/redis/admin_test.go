package redis

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// With 5,000 keys and 200 adds a second from four writers, through the admin
// API and through the record store (as caddy apikey does), every revoke
// succeeds, by id as by key_prefix, and is in force when it answers.
func TestRedisRevokesUnderAdds(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	rs := records(t, r, "busy:")
	keys := seedKeys(t, rs, 5000)
	s := mustOpenRedisStore(t, r, "busy:")
	a := teststores.AdminOver(s)

	stop := make(chan struct{})
	var adders sync.WaitGroup
	var adds atomic.Int64
	for i := range 4 {
		adders.Go(func() {
			// About 50 adds a second each, 200 in all: the issue's
			// 150 a second, and more.
			pace := time.NewTicker(2 * time.Millisecond)
			defer pace.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				if i%2 == 0 {
					if code, body := adminDo(a, "POST", "/apikey/keys", fmt.Sprintf(`{"label": "adder %d/%d"}`, i, n)); code != 201 {
						t.Errorf("admin add: %d %s", code, body)
						return
					}
				} else if _, _, err := keyops.Create(rs, keyops.AddOptions{Label: fmt.Sprintf("adder %d/%d", i, n)}, time.Now(), nil); err != nil {
					t.Errorf("add: %v", err)
					return
				}
				adds.Add(1)
			}
		})
	}
	start := time.Now()
	for i, k := range keys[:30] {
		rec := k.Rec()
		ref := rec.ID
		if i%3 == 1 {
			ref = rec.KeyPrefix
		}
		if i%2 == 0 {
			code, body := adminDo(a, "POST", "/apikey/keys/"+ref+"/revoke", "")
			var got admin.RevokeAnswer
			if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.Warning != "" {
				t.Errorf("admin revoke %d of %s: %d %s", i, ref, code, body)
			} else if admits(s, k.Raw) {
				t.Errorf("admin revoke %d: answered, but the key is still admitted", i)
			}
		} else if _, _, err := keyops.Revoke(rs, ref, time.Now(), nil); err != nil {
			t.Errorf("revoke %d of %s: %v", i, ref, err)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	adders.Wait()
	t.Logf("30 revokes (by id and by key_prefix, admin API and record store) in %s, during %d adds from 4 writers (%.0f a second)", elapsed.Round(time.Millisecond), adds.Load(), float64(adds.Load())/elapsed.Seconds())
	testredis.Eventually(t, 5*time.Second, "a revoked key is still admitted", func() bool {
		for _, k := range keys[:30] {
			if admits(s, k.Raw) {
				return false
			}
		}
		return true
	})
	if !admits(s, keys[30].Raw) {
		t.Error("a key that was not revoked is refused")
	}
	records, _, err := rs.Read()
	if err != nil {
		t.Fatal(err)
	}
	if want := 5000 + int(adds.Load()); len(records) != want {
		t.Errorf("%d records, want %d: an add was lost", len(records), want)
	}
}

// An add between every read and write: a revoke does not care (it touches
// another record); a rotate, which checks the whole key set (no second
// replacement may appear meanwhile), gives up, and says so: a 409
// CONFLICT from the admin API, a message that says what to do from the
// commands, never a 500.
func TestRedisConflictIs409(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "meddle:")
	_, recA := teststores.AddKey(t, rs, "a")
	rawB, recB := teststores.AddKey(t, rs, "b")
	s := mustOpenRedisStore(t, r, "meddle:")
	meddler := records(t, r, "meddle:")
	meddles := 0
	m := meddlingStore{s, func() {
		meddles++
		teststores.AddKey(t, meddler, "meddler")
	}}
	a := teststores.AdminOver(m)

	resp, body := teststores.Call(t, a, "POST", "/apikey/keys/"+recA.ID+"/revoke", "")
	if resp.StatusCode != 200 {
		t.Fatalf("revoke with an add in between: %d %s", resp.StatusCode, body)
	}

	meddles = 0
	resp, body = teststores.Call(t, a, "POST", "/apikey/keys/"+recB.ID+"/rotate", "")
	msg := teststores.WantRefusal(t, resp, body, 409, "CONFLICT", "try again")
	if strings.Contains(msg, "context") {
		t.Errorf("message %q", msg)
	}
	if meddles < 2 {
		t.Errorf("the rotate was tried %d times", meddles)
	}
	if !admits(s, rawB) {
		t.Error("a refused rotate changed the key")
	}

	_, err := keyops.Rotate(m.Records(), keyops.RotateOptions{Ref: recB.ID}, time.Now(), nil)
	if !errors.Is(err, stores.ErrConflict) || !strings.Contains(err.Error(), "try again") {
		t.Errorf("rotate as the command does: %v", err)
	}
}
