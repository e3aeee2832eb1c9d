package redis

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
)

// Config errors of the Redis store: what a user who wrote the config
// wrong, or whose Redis is down, is told.

// Redis down when a config is loaded, without a cache_file: the load
// fails, saying that a cache_file would let the server start.
func TestRedisDownAtStartNamesCacheFile(t *testing.T) {
	dead := &testredis.Server{T: t, URL: fmt.Sprintf("redis://127.0.0.1:%d/0", testredis.FreePort(t))}
	_, err := openRedisStore(t, dead, "", "", time.Hour)
	if err == nil || !strings.Contains(err.Error(), "cache_file") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("start with Redis down and no cache file: %v, want an error naming cache_file", err)
	}

	// A key set that is not there: what helps is making it, not a cache_file.
	r := testredis.Start(t)
	_, err = openRedisStore(t, r, "none:", "", time.Hour)
	if err == nil || strings.Contains(err.Error(), "cache_file") || !strings.Contains(err.Error(), "--create") {
		t.Fatalf("start without a key set: %v, want an error saying how to make one", err)
	}
}
