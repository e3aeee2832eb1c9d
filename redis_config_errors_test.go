package apikey

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Config errors of the Redis store: what a user who wrote the config
// wrong, or whose Redis is down, is told.

// The URL's scheme is checked wherever a URL is read (the JSON config,
// the commands), not by the Caddyfile alone: 127.0.0.1:6379 gets "must
// start with redis://" and the URL as meant, where it got the URL parser's
// "first path segment in URL cannot contain colon"; a URL that may hold a
// password is not echoed; the client's other schemes are taken.
func TestRedisURLNeedsAScheme(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"127.0.0.1:6379", "must start with redis:// or rediss:// (TLS), or unix:// for a socket: redis://127.0.0.1:6379"},
		{"localhost", "redis://localhost"},
		{"/run/redis.sock", "unix:///run/redis.sock"},
		{"http://h:6379", "not http://"},
		{":s3cr3t@127.0.0.1:6379", "must start with redis://"},
		{"user:s3cr3t@h", "must start with redis://"},
	} {
		_, _, err := redisURL(tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "first path segment") {
			t.Errorf("redisURL(%q): %v, want %q and no password", tc.url, err, tc.want)
		}
		if _, err := dialRedisRecords(tc.url, ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("the commands' --redis %s: %v, want %q", tc.url, err, tc.want)
		}
	}
	for _, u := range []string{"redis://h", "rediss://h:6380/1", "REDIS://h", "unix:///run/redis.sock", "valkey://h", "valkeys://h", "redis://:pw@h:1/0"} {
		if _, _, err := redisURL(u); err != nil {
			t.Errorf("redisURL(%q): %v", u, err)
		}
	}

	// The JSON config, with the URL written out and from a placeholder.
	t.Setenv("APIKEY_TEST_REDIS_HOSTPORT", "127.0.0.1:6379")
	for _, url := range []string{"127.0.0.1:6379", "{env.APIKEY_TEST_REDIS_HOSTPORT}"} {
		var h Handler
		if err := json.Unmarshal([]byte(`{"store": {"backend": "redis", "url": "`+url+`"}}`), &h); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "must start with redis:// or rediss://") || !strings.Contains(err.Error(), "redis://127.0.0.1:6379") {
			t.Errorf(`"url": %q: %v, want it to say the URL must start with redis://`, url, err)
		}
	}
}

// Redis down when a config is loaded, without a cache_file: the load
// fails, saying that a cache_file would let the server start.
func TestRedisDownAtStartNamesCacheFile(t *testing.T) {
	dead := &testRedis{t: t, URL: fmt.Sprintf("redis://127.0.0.1:%d/0", freePort(t))}
	_, err := openRedisStore(t, dead, "", "", time.Hour)
	if err == nil || !strings.Contains(err.Error(), "cache_file") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("start with Redis down and no cache file: %v, want an error naming cache_file", err)
	}

	// A key set that is not there: what helps is making it, not a cache_file.
	r := startRedis(t)
	_, err = openRedisStore(t, r, "none:", "", time.Hour)
	if err == nil || strings.Contains(err.Error(), "cache_file") || !strings.Contains(err.Error(), "--create") {
		t.Fatalf("start without a key set: %v, want an error saying how to make one", err)
	}
}
