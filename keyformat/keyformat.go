// Package keyformat is the opt-in checksummed key format: a prefix of the
// operator's choosing, 30 random base62 characters, then 6 base62
// characters of the CRC32 (IEEE) of those 30, left-padded with '0'. It is
// GitHub's token layout (ghp_ + 30 + 6): a secret scanner can tell a real
// key from noise offline, and the handler refuses a mistyped key before
// any hashing or lookup.
//
//	acme_live_  caddyapikeytestvector000000000  0py0eO
//	prefix      30 random (178.6 bits)          the CRC32 of the 30, base62
//
// (without the spaces). The base62 digits are 0-9, A-Z, a-z, in that
// order: the checksum is the CRC32 written in base 62 with those digits,
// most significant first, as the base62 libraries that scanners use
// write it.
//
// A prefix is 3 to 32 characters of [A-Za-z0-9_], starts with a letter
// and ends with '_': the '_' is the boundary a scanner's regular
// expression and a person see between the prefix and the random part,
// and since the random part holds no '_', a key says where its prefix
// ends (Inspect reads a key whose prefix it is not told). A prefix may not
// start with "sk_", the default format's prefix: the default keys ("sk_"
// and 43 characters of URL-safe base64) would then carry it and be
// refused as malformed.
package keyformat

import (
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"unsafe"
)

// The layout of a key after its prefix.
const (
	RandomLen   = 30                      // random base62 characters
	ChecksumLen = 6                       // base62 characters of the CRC32 of the random ones
	BodyLen     = RandomLen + ChecksumLen // what follows the prefix

	// ShownLen is how many random characters a key's key_prefix shows
	// after the prefix: 8 characters (47.6 bits) tell keys apart, as the
	// 8 after "sk_" of the default format do, and leave 22 (131 bits)
	// secret.
	ShownLen = 8

	MinPrefixLen = 3
	MaxPrefixLen = 32

	// DefaultPrefix is the prefix of the default format's keys, which a
	// Format's prefix may not start with.
	DefaultPrefix = "sk_"
)

// Alphabet is the base62 digits, in their order as digits.
const Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Format is a checksummed key format: its keys are Prefix, RandomLen
// random base62 characters and ChecksumLen base62 characters of their
// CRC32.
type Format struct {
	// The keys' prefix, e.g. "acme_live_": 3 to 32 characters of
	// [A-Za-z0-9_], starting with a letter, ending with "_", not starting
	// with "sk_".
	Prefix string `json:"prefix"`
}

// New returns the format with prefix, or why prefix cannot be one.
func New(prefix string) (*Format, error) {
	f := &Format{Prefix: prefix}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// Validate checks the prefix. Its error names the prefix and the rule it
// breaks.
func (f Format) Validate() error {
	p := f.Prefix
	switch {
	case p == "":
		return errors.New("the key format's prefix is empty; give one such as acme_live_")
	case len(p) < MinPrefixLen || len(p) > MaxPrefixLen:
		return fmt.Errorf("key format prefix %q is %d characters long; it must be %d to %d", p, len(p), MinPrefixLen, MaxPrefixLen)
	case !isLetter(p[0]):
		return fmt.Errorf("key format prefix %q must start with a letter (A-Z, a-z)", p)
	case p[len(p)-1] != '_':
		return fmt.Errorf("key format prefix %q must end with _ (as in %s_), so that the prefix reads apart from the random characters", p, p)
	case strings.HasPrefix(p, DefaultPrefix):
		return fmt.Errorf("key format prefix %q starts with %s, the prefix of the default format's keys, which would then be refused as malformed; choose another, such as acme_live_", p, DefaultPrefix)
	}
	for _, r := range p {
		if r >= 0x80 || !isLetter(byte(r)) && !isDigit(byte(r)) && r != '_' {
			return fmt.Errorf("key format prefix %q holds %q; it may hold only A-Z, a-z, 0-9 and _", p, r)
		}
	}
	return nil
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool  { return '0' <= c && c <= '9' }

// Len is the length of the format's keys.
func (f Format) Len() int { return len(f.Prefix) + BodyLen }

// String is the format as the Caddyfile names it: its prefix.
func (f Format) String() string { return f.Prefix }

// Generate returns a new key in the format, its random characters from
// crypto/rand.
func (f Format) Generate() (string, error) {
	if err := f.Validate(); err != nil {
		return "", err
	}
	key := make([]byte, f.Len())
	copy(key, f.Prefix)
	body := key[len(f.Prefix):]
	if err := randomBase62(body[:RandomLen]); err != nil {
		return "", fmt.Errorf("generating key: %w", err)
	}
	putChecksum(body[RandomLen:], crc32.ChecksumIEEE(body[:RandomLen]))
	return string(key), nil
}

// randomBase62 fills dst with random base62 digits, each of the 62 equally
// likely: a random byte below 248 (62 × 4) gives the digit byte % 62, and
// the bytes from 248 up are dropped (rejection sampling), which keeps
// 97% of them.
func randomBase62(dst []byte) error {
	var pool [64]byte
	next := len(pool)
	for n := 0; n < len(dst); {
		if next == len(pool) {
			if _, err := rand.Read(pool[:]); err != nil {
				return err
			}
			next = 0
		}
		b := pool[next]
		next++
		if b < 248 {
			dst[n] = Alphabet[b%62]
			n++
		}
	}
	return nil
}

// putChecksum writes c as len(dst) base62 digits, most significant first,
// left-padded with '0'. Six digits hold any uint32 (62^6 > 2^32).
func putChecksum(dst []byte, c uint32) {
	n := uint64(c)
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = Alphabet[n%62]
		n /= 62
	}
}

// noDigit marks a byte that is not a base62 digit in digitValue; its high
// bit is set, no digit's is.
const noDigit = 0xFF

// digitValue is each byte's value as a base62 digit, or noDigit.
var digitValue = func() (t [256]byte) {
	for i := range t {
		t[i] = noDigit
	}
	for i := 0; i < len(Alphabet); i++ {
		t[Alphabet[i]] = byte(i)
	}
	return t
}()

// Result is what Check found a string to be.
type Result uint8

const (
	// NotThisFormat: the string does not start with the format's prefix
	// (a key of another format, such as the default one). The zero
	// Result: nothing is known to be wrong, nothing is known to be right.
	NotThisFormat Result = iota
	// WellFormed: the prefix, 36 base62 characters, a checksum that
	// holds. Not that the key exists: only a lookup says that.
	WellFormed
	// WrongLength: the prefix, then not 36 characters.
	WrongLength
	// BadCharacter: the prefix and 36 characters, one of them not base62.
	BadCharacter
	// WrongChecksum: the prefix and 36 base62 characters whose last 6 are
	// not the CRC32 of the 30 before them.
	WrongChecksum
)

// Malformed tells whether the string has the prefix but is no key of the
// format: a typo, a key cut short or run into other text, or a guess.
func (r Result) Malformed() bool { return r >= WrongLength }

// String says what the result means, for people.
func (r Result) String() string {
	switch r {
	case NotThisFormat:
		return "not in this format (no such prefix)"
	case WellFormed:
		return "well formed"
	case WrongLength:
		return "malformed: wrong length"
	case BadCharacter:
		return "malformed: a character that is not base62 (0-9, A-Z, a-z)"
	case WrongChecksum:
		return "malformed: the checksum does not match"
	}
	return fmt.Sprintf("Result(%d)", uint8(r))
}

// Check tells whether s is a well-formed key of the format, or how it is
// malformed, or that it is not of the format at all. It allocates nothing
// and reads s once: a length check, one table lookup per character, and
// the CRC32 of the random characters by the standard library (slicing by
// 8 on amd64). It does not validate the format: f must be a valid one
// (see Validate).
func (f Format) Check(s string) Result {
	p := len(f.Prefix)
	if len(s) < p || s[:p] != f.Prefix {
		return NotThisFormat
	}
	if len(s) != p+BodyLen {
		return WrongLength
	}
	// The key's bytes in place: crc32 only reads them, and a string's
	// bytes never change. Copying them into a []byte would allocate (the
	// slice escapes through crc32's function variables) and cost more
	// than the check.
	body := (*[BodyLen]byte)(unsafe.Pointer(unsafe.StringData(s[p:])))
	var bad byte // the OR of every digit value: noDigit's high bit if any is not a digit
	for _, c := range body[:RandomLen] {
		bad |= digitValue[c]
	}
	var sum uint64
	for _, c := range body[RandomLen:] {
		d := digitValue[c]
		bad |= d
		sum = sum*62 + uint64(d)
	}
	if bad&0x80 != 0 {
		return BadCharacter
	}
	if sum != uint64(crc32.ChecksumIEEE(body[:RandomLen])) {
		return WrongChecksum
	}
	return WellFormed
}

// Malformed reports whether s has the format's prefix but cannot be one of
// its keys: its length is wrong, or its last six characters are not the
// checksum of the thirty before them. It is the request path's test, as
// Check(s).Malformed() but quicker for a key of the format: it leaves out
// Check's look at each random character, so a string with a character
// outside base62 in that part and a matching checksum (one in 2^32 of
// them) is not called malformed here; the lookup refuses it as unknown.
func (f Format) Malformed(s string) bool {
	p := len(f.Prefix)
	if len(s) < p || s[:p] != f.Prefix {
		return false
	}
	if len(s) != p+BodyLen {
		return true
	}
	body := (*[BodyLen]byte)(unsafe.Pointer(unsafe.StringData(s[p:])))
	var bad byte
	var sum uint64
	for _, c := range body[RandomLen:] {
		d := digitValue[c]
		bad |= d
		sum = sum*62 + uint64(d)
	}
	return bad&0x80 != 0 || sum != uint64(crc32.ChecksumIEEE(body[:RandomLen]))
}

// Inspect checks s against the format its own prefix names: everything up
// to its last '_' (the random part holds none). It returns that format
// and the result; NotThisFormat (and a zero Format) when s has no '_' or
// what precedes it is no valid prefix, as for a key of the default format.
// It is what `caddy apikey check <key>` asks when it is not told the
// prefix.
func Inspect(s string) (Format, Result) {
	i := strings.LastIndexByte(s, '_')
	if i < 0 {
		return Format{}, NotThisFormat
	}
	f := Format{Prefix: s[:i+1]}
	if f.Validate() != nil {
		return Format{}, NotThisFormat
	}
	return f, f.Check(s)
}

// Pattern is a regular expression (RE2, as Go's regexp and gitleaks read
// it) that matches the format's keys in text: the prefix and 36 base62
// characters, a whole word. It cannot check the checksum: Check does.
func (f Format) Pattern() string {
	return `\b` + regexp.QuoteMeta(f.Prefix) + `[0-9A-Za-z]{36}\b`
}

// AnyPattern matches a key of any format this package allows, whatever its
// prefix: the candidates for Inspect.
const AnyPattern = `\b[A-Za-z][A-Za-z0-9_]{1,30}_[0-9A-Za-z]{36}\b`

// KeyPrefix is the key_prefix shown for raw, a key of the format: the
// prefix and its first ShownLen random characters, enough to recognise
// the key among others and to name it to `caddy apikey revoke`. For a
// string that is not a well-formed key of the format it is the prefix
// alone: never more of a string that may be all secret.
func (f Format) KeyPrefix(raw string) string {
	if f.Check(raw) != WellFormed {
		return f.Prefix
	}
	return raw[:len(f.Prefix)+ShownLen]
}
