// Package ratelimit decides per-key rate limits in memory.
package ratelimit
