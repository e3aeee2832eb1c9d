// Package ratelimit decides per-key rate limits in memory, on every
// request, with no I/O, and lets the servers of a fleet count together.
//
// # The algorithm
//
// Each limit of R requests per window W is a sliding-window counter made
// of two fixed windows: windows are aligned on the Unix epoch (one starts
// at every multiple of W), and a key's state for the limit is the count of
// requests admitted in the window that holds the present (cur) and in the
// one before it (prev). A request e into the current window is admitted if
//
//	cur + ⌈prev × (W − e) / W⌉ < R
//
// that is, if the requests of the last W, the previous window's taken as
// spread evenly over it, leave room for one more. The arithmetic is in
// integers (128-bit products), exact to the nanosecond.
//
// Why not GCRA: its state is one time per key (the theoretical arrival
// time), and two servers' times do not add up to the fleet's: there is no
// way to merge what several servers admitted. Counts per fixed window do
// add: the fleet's count of a window is the sum of its servers' counts,
// which a store keeps with one atomic increment per server and window
// (Redis HINCRBY), and every server agrees on the windows without a word,
// as they are aligned on the epoch. The state stays a few integers per key
// and limit, unlike a log of timestamps.
//
// What it costs in accuracy, measured (TestAccuracySingleServer, a client
// at 3× a limit of 600/1m for 3 minutes): every fixed window admits 599 to
// 600; every sliding minute from the third on holds 598 to 602 (602 with
// Poisson arrivals, 600 with even ones). The weighting assumes that the
// previous window's requests were spread evenly; when they were not, the
// requests admitted within one sliding window may exceed R: a client that
// spends its whole quota in the last second of a window and then sends
// steadily gets 1189 admitted within one sliding minute at 600/1m
// (TestAccuracyAdversarial). No fixed window ever admits more than R on one
// server, so no sliding window of length W holds more than 2R.
//
// A request refused by one of a key's limits is counted by none of them,
// and refused requests are never counted: a client that retries too often
// is not kept out for it.
//
// # Memory
//
// A key's state lives from its first request until its windows, and the
// ones after them, are over (2W after its last request); then Sweep frees
// it, and a shard that shrank to a quarter of its peak makes its map
// again, so that the memory goes back to the runtime (and, in time, to the
// system). A shard that grows also sweeps itself, once it has added as
// many keys as it held after its last sweep, so that the state stays
// bounded if Sweep is never called.
//
// # A fleet
//
// With Options.Fleet, each server still decides alone, from its own
// counts plus the other servers' as of its last sync. Every sync interval
// S, the server's sync loop calls Pending, which hands it, for each key
// that admitted a request since the last sync, the requests not yet told
// per slot (key, window, window index) and the slots to read back; the
// loop adds each slot's delta to the fleet's total (HINCRBY into a hash per
// window and index, its field the key id, the hash expiring two windows
// after its window starts) and reads the totals back (the reply of
// HINCRBY; HGET or HMGET for a delta of 0), and hands them to Synced. A
// sync that fails is simply not handed to Synced: the same requests are
// pending again at the next one, and the server goes on deciding from what
// it has. (A reply lost after the store applied it counts those requests
// twice: stricter, never looser.)
//
// The overshoot, for N servers, a limit of R per window W, a sync every S
// and λ_j the rate of requests reaching server j: server i, when it
// admits a request at t, has seen every other server's requests up to that
// server's last sync before i's own last sync, that is up to a time after
// t − 2S (i synced after t − S, and j before that but after t − 2S).
// What i has not seen of j is at most what j admitted in 2S, at most
// 2S·λ_j. Since i admits only while its view is below R, the fleet's count
// is below
//
//	R + 2S · Σ_{j≠i} λ_j,   at most R + 2S·λ·(N−1)/N when the load λ is spread evenly,
//
// and never more than N·R (each server alone stops at R): the overshoot is
// at most min(2S·λ·(N−1)/N, (N−1)·R), plus the store's round trip added to
// S. A server that begins to receive a key it has not admitted for a sync
// interval or more decides on the others' counts as of its last sync of
// that key until its next sync: it may admit up to λ_i·S more (all traffic
// switched from one server to another: λ·S). With the store down, each
// server enforces R on its own: up to N·R for the fleet.
//
// Measured with three simulated servers and a store in memory
// (TestFleetAccuracy, TestFleetOvershootBound): 600/1m at 3× for 9 minutes,
// round-robin, then all on one server, then all on another, S = 100 ms:
// 599 to 602 per fixed window (bound 604). 6000/1m at 1000 requests a
// second round-robin: the most in a window was 6006, 6066 and 6666 for S
// of 10 ms, 100 ms and 1 s (bounds 6013, 6133 and 7333): the measured
// overshoot is about S·λ·(N−1)/N, half the bound, with the servers' syncs
// spread over the interval.
package ratelimit
