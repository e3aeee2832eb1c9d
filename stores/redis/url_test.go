package redis

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddyserver/caddy/v2"
)

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
		_, _, err := parseURL(tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "first path segment") {
			t.Errorf("parseURL(%q): %v, want %q and no password", tc.url, err, tc.want)
		}
		if _, err := Open(Target{URL: tc.url}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("the commands' --redis %s: %v, want %q", tc.url, err, tc.want)
		}
	}
	for _, u := range []string{"redis://h", "rediss://h:6380/1", "REDIS://h", "unix:///run/redis.sock", "valkey://h", "valkeys://h", "redis://:pw@h:1/0"} {
		if _, _, err := parseURL(u); err != nil {
			t.Errorf("parseURL(%q): %v", u, err)
		}
	}

	// The JSON config, with the URL written out and from a placeholder.
	t.Setenv("APIKEY_TEST_REDIS_HOSTPORT", "127.0.0.1:6379")
	for _, url := range []string{"127.0.0.1:6379", "{env.APIKEY_TEST_REDIS_HOSTPORT}"} {
		var s Store
		if err := json.Unmarshal([]byte(`{"url": "`+url+`"}`), &s); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := s.Provision(ctx)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "must start with redis:// or rediss://") || !strings.Contains(err.Error(), "redis://127.0.0.1:6379") {
			t.Errorf(`"url": %q: %v, want it to say the URL must start with redis://`, url, err)
		}
	}
}

// The URL from a placeholder, with a password: it works, and a wrong
// password fails the load with the URL named, the password not.
func TestRedisStoreURLFromEnvWithPassword(t *testing.T) {
	r := testredis.Start(t)
	r.Do("CONFIG", "SET", "requirepass", "s3cret-pass")
	u := strings.Replace(r.URL, "redis://", "redis://:s3cret-pass@", 1)
	rs, err := Open(Target{URL: u, Prefix: "env:", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	raw, _ := teststores.AddKey(t, rs, "from env")

	provision := func(url string) (*Store, error) {
		t.Setenv("APIKEY_TEST_REDIS_URL", url)
		var s Store
		if err := json.Unmarshal([]byte(`{"url": "{env.APIKEY_TEST_REDIS_URL}", "prefix": "env:"}`), &s); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(func() { _ = s.Cleanup(); cancel() })
		return &s, s.Provision(ctx)
	}
	s, err := provision(u)
	if err != nil {
		t.Fatalf("provision with the URL from {env.*}: %v", err)
	}
	if k, _ := s.KeySet().Lookup(raw); k == nil {
		t.Fatal("the key is not in force")
	}
	_, err = provision(strings.Replace(u, "s3cret-pass", "wrong-pass", 1))
	if err == nil || strings.Contains(err.Error(), "wrong-pass") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("a wrong password: %v; want an error naming the server, not the password", err)
	}
}
