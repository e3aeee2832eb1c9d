package keyspace

import (
	"errors"
	"strings"

	"github.com/redis/rueidis"
)

// ErrNoKeySet: the prefix holds no key set (it was never made, or Redis
// lost it).
var ErrNoKeySet = errors.New("no key set")

// ErrRecordsGone: the key set's records hash is gone while its version
// remains. No change removes every record (revoke keeps them), so Redis
// lost them: it is the key set gone (errors.Is ErrNoKeySet).
var ErrRecordsGone error = recordsGone{}

type recordsGone struct{}

func (recordsGone) Error() string {
	return "the key set's records are gone from Redis while its version and change log remain (evicted under a maxmemory-policy allkeys-*, or deleted by hand)"
}
func (recordsGone) Is(target error) bool { return target == ErrNoKeySet }

// ErrNotConnected: a store that started from its cache file has not
// reached Redis yet.
var ErrNotConnected = errors.New("not connected to Redis yet (the server started from its cache file)")

// ErrIDTaken: a record to add has the id of one already there.
var ErrIDTaken = errors.New("a record with this id is there already")

// ErrVersionMoved: another writer changed the key set between the read
// and the write; the edit is done again on the new version.
var ErrVersionMoved = errors.New("the key set changed meanwhile")

// ErrRecordMoved: another writer changed a record that a change of named
// records changes, between the read and the write; the edit is done again.
var ErrRecordMoved = errors.New("the record changed meanwhile")

// unusableReply is a reply of Redis that cannot be used: Redis answered,
// with what the key set's keys should not hold.
type unusableReply string

func (e unusableReply) Error() string { return string(e) }

// Refused is an error of a script that refused what it was asked, its
// message the one to show as it is (a grant beyond the most allowed).
type Refused string

func (e Refused) Error() string { return string(e) }

// Answered reports whether err is an answer of Redis, rather than a
// failure to reach it: an error reply, a reply of another type than the
// one asked for, or one that cannot be used (unusableReply). Replies that
// say that the server cannot serve now (loading its data, busy with a
// script, cut from its primary or its Cluster) or that it changed under a
// blocking read (a primary made a replica, the log deleted: UNBLOCKED)
// are not: they are the server's state, not what it holds, and are tried
// again as a failure to reach it is.
func Answered(err error) bool {
	var re *rueidis.RedisError
	if errors.As(err, &re) && !re.IsNil() {
		if re.IsLoading() || re.IsClusterDown() || re.IsTryAgain() {
			return false
		}
		code, _, _ := strings.Cut(re.Error(), " ")
		switch code {
		case "BUSY", "MASTERDOWN", "UNBLOCKED":
			return false
		}
		return true
	}
	return rueidis.IsParseErr(err) || errors.As(err, new(unusableReply))
}
