// Package credential reads the API key a request presents, from the
// configured headers in order and then the query parameter, and removes
// every key a request carries before the handlers after the apikey
// handler see it (hide_credentials). It is the apikey handler's, on its
// request path: finding a key allocates nothing unless the query's value
// is percent-encoded.
package credential

import (
	"net/http"
	"net/url"
	"strings"
)

// Header is a request header that may carry the key, with its name in
// canonical form (http.CanonicalHeaderKey) so that the request path reads
// the header map directly.
type Header struct {
	Name string
	// The authentication scheme the value must start with (compared
	// without regard to case), e.g. "Bearer"; "": the whole value is the
	// key.
	Scheme string
}

// Sources are where a handler reads the key from.
type Sources struct {
	Headers []Header // in order; the first one that carries a key wins
	Query   string   // the query parameter read after the headers; "": none
}

// Status tells whether a request presents a key.
type Status uint8

// The statuses of a Credential.
const (
	None      Status = iota // no source carries a key
	Found                   // one source carries exactly one key
	Ambiguous               // the first source with a key carries different keys
)

// Credential is the key a request presents and where it came from.
type Credential struct {
	Key    string
	Status Status
	Header string // canonical header name, when the key came from a header
	Param  string // query parameter name, when the key came from the query
}

// Find finds the key of a request: the headers in order, then the query
// parameter. The first source that carries a key wins. A source that
// carries two different keys (a repeated header or parameter) makes the
// request ambiguous rather than letting the first one win, since a proxy
// in front might pick another one than Caddy does.
func (s *Sources) Find(r *http.Request) Credential {
	for i := range s.Headers {
		src := &s.Headers[i]
		if key, st := src.extract(r.Header[src.Name]); st != None {
			return Credential{Key: key, Status: st, Header: src.Name}
		}
	}
	if s.Query != "" && r.URL.RawQuery != "" {
		if key, st := queryValue(r.URL.RawQuery, s.Query); st != None {
			return Credential{Key: key, Status: st, Param: s.Query}
		}
	}
	return Credential{}
}

// extract returns the key carried by the values of one header.
func (s *Header) extract(values []string) (string, Status) {
	var found string
	st := None
	for _, v := range values {
		k := s.keyFrom(v)
		if k == "" {
			continue
		}
		if st == Found && k != found {
			return "", Ambiguous
		}
		found, st = k, Found
	}
	return found, st
}

// keyFrom returns the key in one header value, or "" if it carries none: an
// empty value, or (for a source with a scheme) a value with another scheme
// or with the scheme alone. The scheme is matched without regard to case
// and spaces around the key are trimmed.
func (s *Header) keyFrom(v string) string {
	v = trimOWS(v)
	if s.Scheme == "" {
		return v
	}
	n := len(s.Scheme)
	if len(v) <= n || !strings.EqualFold(v[:n], s.Scheme) || (v[n] != ' ' && v[n] != '\t') {
		return ""
	}
	return trimOWS(v[n:])
}

// trimOWS trims HTTP's optional white space (spaces and tabs).
func trimOWS(s string) string { return strings.Trim(s, " \t") }

// queryValue returns the value of parameter name in a raw query string,
// without parsing the whole query into a map (the hot path allocates only
// when the value is percent-encoded). Empty values are no key.
func queryValue(rawQuery, name string) (string, Status) {
	var found string
	st := None
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(pair, "=")
		if !queryNameIs(k, name) {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			if unescaped, err := url.QueryUnescape(v); err == nil {
				v = unescaped
			}
		}
		if v == "" {
			continue
		}
		if st == Found && v != found {
			return "", Ambiguous
		}
		found, st = v, Found
	}
	return found, st
}

// queryNameIs reports whether the raw (possibly escaped) parameter name k is
// name.
func queryNameIs(k, name string) bool {
	if k == name {
		return true
	}
	if !strings.ContainsAny(k, "%+") {
		return false
	}
	unescaped, err := url.QueryUnescape(k)
	return err == nil && unescaped == name
}

// Hide removes every key the request carries in the sources, so that the
// handlers after this one (a reverse proxy's upstream above all) never
// see one: not the key that authenticated the request, nor a copy or
// another key sent beside it, nor one in a query pair that the handler
// does not read but an upstream might (RemoveQueryParam). Header values
// that carry no key, such as Authorization credentials of another scheme
// meant for the upstream, stay.
func (s *Sources) Hide(r *http.Request) {
	for i := range s.Headers {
		src := &s.Headers[i]
		values := r.Header[src.Name]
		var kept []string
		for _, v := range values {
			if src.keyFrom(v) == "" {
				kept = append(kept, v)
			}
		}
		switch {
		case len(kept) == len(values):
		case len(kept) == 0:
			delete(r.Header, src.Name)
		default:
			r.Header[src.Name] = kept
		}
	}
	if s.Query != "" && r.URL.RawQuery != "" {
		if q := RemoveQueryParam(r.URL.RawQuery, s.Query); q != r.URL.RawQuery {
			r.URL.RawQuery = q
			r.RequestURI = r.URL.RequestURI()
		}
	}
}

// RemoveQueryParam drops from a raw query string every pair that an
// upstream could take for parameter name, and keeps everything else byte
// for byte. Pairs are split on "&" and on ";" (which many servers and
// frameworks still take as a separator too), and a pair goes when its name
// reads as name to any common decoder (see NameMayBe). Of the pair and
// the separators around it, the pair and the separator before it go (after
// it, for the first pair), so the pairs kept keep theirs.
func RemoveQueryParam(rawQuery, name string) string {
	if !queryHasParam(rawQuery, name) {
		return rawQuery
	}
	var b strings.Builder
	b.Grow(len(rawQuery))
	wrote := false
	sep := "" // the separator before the pair
	for rest := rawQuery; ; {
		i := strings.IndexAny(rest, "&;")
		pair := rest
		if i >= 0 {
			pair = rest[:i]
		}
		if k, _, _ := strings.Cut(pair, "="); !NameMayBe(k, name) {
			if wrote {
				b.WriteString(sep)
			}
			b.WriteString(pair)
			wrote = true
		}
		if i < 0 {
			break
		}
		sep, rest = rest[i:i+1], rest[i+1:]
	}
	return b.String()
}

// queryHasParam reports whether RemoveQueryParam would drop a pair of
// rawQuery, without allocating when the names are plain.
func queryHasParam(rawQuery, name string) bool {
	for rest := rawQuery; rest != ""; {
		pair := rest
		if i := strings.IndexAny(rest, "&;"); i >= 0 {
			pair, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		if k, _, _ := strings.Cut(pair, "="); NameMayBe(k, name) {
			return true
		}
	}
	return false
}

// NameMayBe reports whether the raw query parameter name k may read as name
// to some upstream: once it is percent-decoded leniently, as often as it
// decodes (double encoding, as behind a proxy that decodes once), with "+"
// as a space, "%uXXXX" as IIS's escape and a malformed escape kept as it is;
// then compared without regard to ASCII case (ASP.NET's query collection),
// cut at a NUL, and with PHP's name mangling: leading spaces dropped, an
// array suffix ("name[]", "name[x]") dropped, and " ", "." and "[" read as
// "_".
func NameMayBe(k, name string) bool {
	if k == name {
		return true
	}
	for range 4 { // each decoding shortens it; real double encodings take two
		if !strings.ContainsAny(k, "%+") {
			break
		}
		d := lenientUnescape(k)
		if d == k {
			break
		}
		k = d
	}
	return looseNameEqual(k, name)
}

// lenientUnescape decodes a query component as the most lenient decoders
// do: "+" is a space, "%XX" a byte, "%uXXXX" a UTF-8 encoded character, and
// any other "%" stays as it is.
func lenientUnescape(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		case c == '%' && i+5 < len(s) && (s[i+1] == 'u' || s[i+1] == 'U') &&
			isHex(s[i+2]) && isHex(s[i+3]) && isHex(s[i+4]) && isHex(s[i+5]):
			r := rune(unhex(s[i+2]))<<12 | rune(unhex(s[i+3]))<<8 | rune(unhex(s[i+4]))<<4 | rune(unhex(s[i+5]))
			b.WriteRune(r)
			i += 5
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// looseNameEqual compares two decoded parameter names as the loosest
// common upstream would (see NameMayBe), without allocating.
func looseNameEqual(a, b string) bool {
	a, b = phpBaseName(a), phpBaseName(b)
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if phpNameByte(a[i]) != phpNameByte(b[i]) {
			return false
		}
	}
	return true
}

// phpBaseName is the part of a decoded parameter name that PHP keys its
// variable on: from the first byte that is not a space, up to a NUL, and
// without an array suffix ("[…]" closed by a "]").
func phpBaseName(s string) string {
	s = strings.TrimLeft(s, " ")
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if i := strings.IndexByte(s, '['); i > 0 && strings.IndexByte(s[i:], ']') > 0 {
		s = s[:i]
	}
	return s
}

// phpNameByte folds one byte of a name: ASCII letters to lower case, and
// " ", "." and "[" to "_" as PHP does.
func phpNameByte(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == ' ' || c == '.' || c == '[':
		return '_'
	}
	return c
}
