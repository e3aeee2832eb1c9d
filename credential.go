package apikey

import (
	"net/http"
	"net/url"
	"strings"
)

// credentialSource is a request header that may carry the key, with its
// name in canonical form so the hot path reads the header map directly.
type credentialSource struct {
	header string
	scheme string
}

type credStatus uint8

const (
	credNone      credStatus = iota // no source carries a key
	credFound                       // one source carries exactly one key
	credAmbiguous                   // the first source with a key carries different keys
)

// credential is the key a request presents and where it came from.
type credential struct {
	key    string
	status credStatus
	header string // canonical header name, when the key came from a header
	param  string // query parameter name, when the key came from the query
}

// credential finds the key of a request: the configured headers in order,
// then the query parameter. The first source that carries a key wins. A
// source that carries two different keys (a repeated header or parameter)
// makes the request ambiguous rather than letting the first one win,
// since a proxy in front might pick another one than Caddy does.
func (h *Handler) credential(r *http.Request) credential {
	for i := range h.sources {
		src := &h.sources[i]
		if key, st := src.extract(r.Header[src.header]); st != credNone {
			return credential{key: key, status: st, header: src.header}
		}
	}
	if h.query != "" && r.URL.RawQuery != "" {
		if key, st := queryValue(r.URL.RawQuery, h.query); st != credNone {
			return credential{key: key, status: st, param: h.query}
		}
	}
	return credential{}
}

// extract returns the key carried by the values of one header.
func (s *credentialSource) extract(values []string) (string, credStatus) {
	var found string
	st := credNone
	for _, v := range values {
		k := s.keyFrom(v)
		if k == "" {
			continue
		}
		if st == credFound && k != found {
			return "", credAmbiguous
		}
		found, st = k, credFound
	}
	return found, st
}

// keyFrom returns the key in one header value, or "" if it carries none: an
// empty value, or (for a source with a scheme) a value with another scheme
// or with the scheme alone. The scheme is matched without regard to case
// and spaces around the key are trimmed.
func (s *credentialSource) keyFrom(v string) string {
	v = trimOWS(v)
	if s.scheme == "" {
		return v
	}
	n := len(s.scheme)
	if len(v) <= n || !strings.EqualFold(v[:n], s.scheme) || (v[n] != ' ' && v[n] != '\t') {
		return ""
	}
	return trimOWS(v[n:])
}

// trimOWS trims HTTP's optional white space (spaces and tabs).
func trimOWS(s string) string { return strings.Trim(s, " \t") }

// queryValue returns the value of parameter name in a raw query string,
// without parsing the whole query into a map (the hot path allocates only
// when the value is percent-encoded). Empty values are no key.
func queryValue(rawQuery, name string) (string, credStatus) {
	var found string
	st := credNone
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
		if st == credFound && v != found {
			return "", credAmbiguous
		}
		found, st = v, credFound
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

// hideCredentials removes every key the request carries in the enabled
// sources, so that the handlers after this one (a reverse proxy's upstream
// above all) never see one: not the key that authenticated the request, nor
// a copy or another key sent beside it, nor one in a query pair that the
// handler does not read but an upstream might (removeQueryParam). Header
// values that carry no key, such as Authorization credentials of another
// scheme meant for the upstream, stay.
func (h *Handler) hideCredentials(r *http.Request) {
	for i := range h.sources {
		src := &h.sources[i]
		values := r.Header[src.header]
		var kept []string
		for _, v := range values {
			if src.keyFrom(v) == "" {
				kept = append(kept, v)
			}
		}
		switch {
		case len(kept) == len(values):
		case len(kept) == 0:
			delete(r.Header, src.header)
		default:
			r.Header[src.header] = kept
		}
	}
	if h.query != "" && r.URL.RawQuery != "" {
		if q := removeQueryParam(r.URL.RawQuery, h.query); q != r.URL.RawQuery {
			r.URL.RawQuery = q
			r.RequestURI = r.URL.RequestURI()
		}
	}
}

// removeQueryParam drops from a raw query string every pair that an
// upstream could take for parameter name, and keeps everything else byte
// for byte. Pairs are split on "&" and on ";" (which many servers and
// frameworks still take as a separator too), and a pair goes when its name
// reads as name to any common decoder (see queryNameMayBe). Of the pair and
// the separators around it, the pair and the separator before it go (after
// it, for the first pair), so the pairs kept keep theirs.
func removeQueryParam(rawQuery, name string) string {
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
		if k, _, _ := strings.Cut(pair, "="); !queryNameMayBe(k, name) {
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

// queryHasParam reports whether removeQueryParam would drop a pair of
// rawQuery, without allocating when the names are plain.
func queryHasParam(rawQuery, name string) bool {
	for rest := rawQuery; rest != ""; {
		pair := rest
		if i := strings.IndexAny(rest, "&;"); i >= 0 {
			pair, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		if k, _, _ := strings.Cut(pair, "="); queryNameMayBe(k, name) {
			return true
		}
	}
	return false
}

// queryNameMayBe reports whether the raw parameter name k may read as name
// to some upstream: once it is percent-decoded leniently, as often as it
// decodes (double encoding, as behind a proxy that decodes once), with "+"
// as a space, "%uXXXX" as IIS's escape and a malformed escape kept as it is;
// then compared without regard to ASCII case (ASP.NET's query collection),
// cut at a NUL, and with PHP's name mangling: leading spaces dropped, an
// array suffix ("name[]", "name[x]") dropped, and " ", "." and "[" read as
// "_".
func queryNameMayBe(k, name string) bool {
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
// common upstream would (see queryNameMayBe), without allocating.
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
