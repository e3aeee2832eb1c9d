package keyformat

import (
	"crypto/sha256"
	"hash/crc32"
	"math"
	"math/big"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

var acme = Format{Prefix: "acme_live_"}

// base62Independent writes c in base 62 with the digits 0-9A-Za-z, by
// another road than putChecksum: math/big writes base 62 with 0-9a-zA-Z,
// and swapping the letters' case gives 0-9A-Za-z.
func base62Independent(c uint32) string {
	s := new(big.Int).SetUint64(uint64(c)).Text(62)
	s = strings.Map(func(r rune) rune {
		switch {
		case unicode.IsLower(r):
			return unicode.ToUpper(r)
		case unicode.IsUpper(r):
			return unicode.ToLower(r)
		}
		return r
	}, s)
	return strings.Repeat("0", ChecksumLen-len(s)) + s
}

// TestKnownVector checks a key computed outside this package: the random
// part's CRC32 and its base62 come from Python's zlib.crc32 (0x2DC52718)
// and a base62 encoder with the digits 0-9A-Za-z, and it is one whose
// checksum needs the '0' padding.
func TestKnownVector(t *testing.T) {
	const random = "caddyapikeytestvector000000000"
	if got := crc32.ChecksumIEEE([]byte(random)); got != 0x2DC52718 {
		t.Fatalf("crc32 %#x, want 0x2DC52718", got)
	}
	if got := base62Independent(0x2DC52718); got != "0py0eO" {
		t.Fatalf("independent base62 %q, want 0py0eO", got)
	}
	key := "acme_live_" + random + "0py0eO"
	if r := acme.Check(key); r != WellFormed {
		t.Fatalf("Check(%q) = %v", key, r)
	}
	// Two more from Python, without padding.
	for _, k := range []string{"abcdefghijABCDEFGHIJ0123456789" + "2C2O59", strings.Repeat("0", 30) + "2C8GjS", strings.Repeat("z", 30) + "4IlJEz"} {
		if r := acme.Check("acme_live_" + k); r != WellFormed {
			t.Errorf("Check(acme_live_%s) = %v", k, r)
		}
	}
}

// TestChecksumMatchesStdlib checks generated keys' checksums against
// crc32.ChecksumIEEE and math/big's base 62, and Check's reading of them
// in place.
func TestChecksumMatchesStdlib(t *testing.T) {
	for range 2000 {
		k, err := acme.Generate()
		if err != nil {
			t.Fatal(err)
		}
		random := k[len(acme.Prefix) : len(acme.Prefix)+RandomLen]
		want := crc32.ChecksumIEEE([]byte(random))
		if got := k[len(k)-ChecksumLen:]; got != base62Independent(want) {
			t.Fatalf("key %q ends in %q, want %q", k, got, base62Independent(want))
		}
	}
}

func TestGenerate(t *testing.T) {
	const n = 20000
	counts := map[byte]int{}
	seen := map[string]bool{}
	for range n {
		k, err := acme.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(k) != len(acme.Prefix)+36 || !strings.HasPrefix(k, acme.Prefix) {
			t.Fatalf("key %q: want %s and 36 characters", k, acme.Prefix)
		}
		if r := acme.Check(k); r != WellFormed {
			t.Fatalf("Check(Generate()) = %v for %q", r, k)
		}
		if seen[k] {
			t.Fatalf("key %q made twice", k)
		}
		seen[k] = true
		for i := len(acme.Prefix); i < len(acme.Prefix)+RandomLen; i++ {
			counts[k[i]]++
		}
	}
	// Every digit and no other byte, each about as often: with 600 000
	// draws, 9677 expected per digit, sd 97. Rejection sampling keeps the
	// low digits from coming up more often than the rest (byte % 62 over
	// all 256 values would give 0-7 one fifth more); chi-square with 61
	// degrees of freedom stays below 130 with probability 1 - 2e-6.
	if len(counts) != 62 {
		t.Fatalf("%d different characters, want the 62 digits: %v", len(counts), counts)
	}
	expected := float64(n*RandomLen) / 62
	chi2 := 0.0
	for c, got := range counts {
		if !strings.ContainsRune(Alphabet, rune(c)) {
			t.Fatalf("character %q is not base62", c)
		}
		d := float64(got) - expected
		chi2 += d * d / expected
	}
	if chi2 > 130 {
		t.Errorf("chi-square %.1f over 61 degrees of freedom: the digits are not uniform: %v", chi2, counts)
	}
	t.Logf("chi-square %.1f (61 degrees of freedom)", chi2)
	if bits := RandomLen * math.Log2(62); bits < 178 {
		t.Errorf("%d random base62 characters hold %.1f bits, want at least 178", RandomLen, bits)
	}
}

func TestGenerateRefusesBadFormat(t *testing.T) {
	if k, err := (Format{Prefix: "bad prefix_"}).Generate(); err == nil {
		t.Fatalf("Generate with a bad prefix made %q", k)
	}
	if k, err := (Format{}).Generate(); err == nil {
		t.Fatalf("Generate with no prefix made %q", k)
	}
}

func TestCheckMalformed(t *testing.T) {
	good, err := acme.Generate()
	if err != nil {
		t.Fatal(err)
	}
	p := len(acme.Prefix)
	// swap replaces the character at i with one that is base62 and
	// different.
	swap := func(s string, i int) string {
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	// transpose swaps two neighbouring characters that differ.
	transpose := func(s string) string {
		for i := p; i < len(s)-1; i++ {
			if s[i] != s[i+1] {
				return s[:i] + string(s[i+1]) + string(s[i]) + s[i+2:]
			}
		}
		t.Fatal("no two neighbours differ")
		return ""
	}
	tests := []struct {
		name string
		in   string
		want Result
	}{
		{"well formed", good, WellFormed},
		{"empty", "", NotThisFormat},
		{"default format", "sk_1mTbK1F2x8bH7kJ0oXw4Qn3rVv5yZt9uLc6dEa2fGhI", NotThisFormat},
		{"prefix in another case", strings.ToUpper(acme.Prefix) + good[p:], NotThisFormat},
		{"prefix cut short", acme.Prefix[:p-1], NotThisFormat},
		{"prefix alone", acme.Prefix, WrongLength},
		{"one character short", good[:len(good)-1], WrongLength},
		{"one character more", good + "0", WrongLength},
		{"run into other text", good + "_x", WrongLength},
		{"checksum missing", good[:p+RandomLen], WrongLength},
		{"twice the prefix", acme.Prefix + good, WrongLength},
		{"a dash in the random part", good[:p+3] + "-" + good[p+4:], BadCharacter},
		{"an underscore in the checksum", good[:len(good)-1] + "_", BadCharacter},
		{"a space", good[:p+10] + " " + good[p+11:], BadCharacter},
		{"a NUL", good[:p+10] + "\x00" + good[p+11:], BadCharacter},
		{"a byte above 0x7F", good[:p+10] + "\xff" + good[p+11:], BadCharacter},
		{"a typo in the random part", swap(good, p+5), WrongChecksum},
		{"a typo in the checksum", swap(good, len(good)-1), WrongChecksum},
		{"two characters transposed", transpose(good), WrongChecksum},
		{"checksum of zeros", good[:p+RandomLen] + "000000", WrongChecksum},
		// A checksum that overflows 32 bits: "zzzzzz" is 62^6-1.
		{"checksum beyond 32 bits", good[:p+RandomLen] + "zzzzzz", WrongChecksum},
		// The checksum plus 2^32 written in base 62 would wrap a 32-bit
		// sum; Check adds in 64 bits.
		{"checksum plus 2^32", good[:p+RandomLen] + base62Plus(crc32.ChecksumIEEE([]byte(good[p:p+RandomLen]))), WrongChecksum},
	}
	for _, tt := range tests {
		if got := acme.Check(tt.in); got != tt.want {
			t.Errorf("%s: Check(%q) = %v, want %v", tt.name, tt.in, got, tt.want)
		}
		if got := acme.Check(tt.in).Malformed(); got != (tt.want >= WrongLength) {
			t.Errorf("%s: Malformed() = %v", tt.name, got)
		}
		// The request path's quick test agrees: each bad character
		// here also breaks the checksum (the one it misses is below).
		if got := acme.Malformed(tt.in); got != tt.want.Malformed() {
			t.Errorf("%s: Format.Malformed(%q) = %v", tt.name, tt.in, got)
		}
	}
	// A character outside base62 in the random part, with the checksum
	// of what is there: Check calls it malformed, the quick test leaves
	// it to the lookup.
	odd := acme.Prefix + "-" + good[p+1:p+RandomLen]
	odd += base62Independent(crc32.ChecksumIEEE([]byte(odd[p:])))
	if acme.Check(odd) != BadCharacter || acme.Malformed(odd) {
		t.Errorf("%q: Check = %v, Format.Malformed = %v", odd, acme.Check(odd), acme.Malformed(odd))
	}
	if NotThisFormat.Malformed() || WellFormed.Malformed() {
		t.Error("NotThisFormat or WellFormed is Malformed")
	}
	var zero Result
	if zero != NotThisFormat {
		t.Error("the zero Result claims something")
	}
}

// base62Plus writes c + 2^32 in six base62 digits.
func base62Plus(c uint32) string {
	n := uint64(c) + 1<<32
	b := make([]byte, ChecksumLen)
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = Alphabet[n%62]
		n /= 62
	}
	return string(b)
}

// TestCheckCatchesEveryTypo checks that a single wrong character anywhere
// after the prefix is caught, on many keys: a CRC32 catches every change
// of one character.
func TestCheckCatchesEveryTypo(t *testing.T) {
	for range 50 {
		k, _ := acme.Generate()
		b := []byte(k)
		for i := len(acme.Prefix); i < len(b); i++ {
			orig := b[i]
			for j := 0; j < len(Alphabet); j++ {
				if Alphabet[j] == orig {
					continue
				}
				b[i] = Alphabet[j]
				if r := acme.Check(string(b)); r != WrongChecksum || !acme.Malformed(string(b)) {
					t.Fatalf("%q with position %d changed: %v, Format.Malformed %v", b, i, r, acme.Malformed(string(b)))
				}
			}
			b[i] = orig
		}
	}
}

func TestValidate(t *testing.T) {
	for _, p := range []string{"acme_live_", "ghp_", "ab_", "ACME_", "a1_", "x_y_z_", "sK_", "Sk_live_", strings.Repeat("a", 31) + "_"} {
		if err := (Format{Prefix: p}).Validate(); err != nil {
			t.Errorf("Validate(%q): %v", p, err)
		}
	}
	for _, tc := range []struct{ prefix, want string }{
		{"", "empty"},
		{"a_", "3 to 32"},
		{strings.Repeat("a", 32) + "_", "3 to 32"},
		{"acme", "must end with _"},
		{"acme_live", "must end with _"},
		{"_acme_", "start with a letter"},
		{"1acme_", "start with a letter"},
		{"acme-live_", `holds '-'`},
		{"acme live_", `holds ' '`},
		{"acmé_", `holds 'é'`},
		{"sk_", "default format"},
		{"sk_live_", "default format"},
	} {
		err := (Format{Prefix: tc.prefix}).Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%q) = %v, want an error saying %q", tc.prefix, err, tc.want)
		}
		if f, err := New(tc.prefix); err == nil || f != nil {
			t.Errorf("New(%q) = %v, %v", tc.prefix, f, err)
		}
	}
}

// TestNoDefaultKeyHasAPrefix checks the reason for refusing "sk_…"
// prefixes the other way round: a default key never reads as a key of a
// valid format, so switching a format on never refuses one.
func TestNoDefaultKeyHasAPrefix(t *testing.T) {
	for _, k := range []string{
		"sk_1mTbK1F2x8bH7kJ0oXw4Qn3rVv5yZt9uLc6dEa2fGhI",
		"sk_abc_defghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ", // a '_' in the random part
		"sk_ab-cd_efghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP",
	} {
		if f, r := Inspect(k); r != NotThisFormat {
			t.Errorf("Inspect(%q) = %q, %v", k, f.Prefix, r)
		}
	}
}

func TestInspect(t *testing.T) {
	k, _ := acme.Generate()
	if f, r := Inspect(k); r != WellFormed || f != acme {
		t.Errorf("Inspect(%q) = %q, %v", k, f.Prefix, r)
	}
	if f, r := Inspect(k[:len(k)-6] + "zzzzzz"); r != WrongChecksum || f != acme {
		t.Errorf("Inspect(typo) = %q, %v", f.Prefix, r)
	}
	for _, s := range []string{"", "nounderscore", "_", "1x_" + k[len(acme.Prefix):], "a b_" + k[len(acme.Prefix):]} {
		if f, r := Inspect(s); r != NotThisFormat || f != (Format{}) {
			t.Errorf("Inspect(%q) = %q, %v; want not this format", s, f.Prefix, r)
		}
	}
	// A prefix with a key cut short reads as that prefix, malformed.
	if f, r := Inspect(k[:len(k)-3]); r != WrongLength || f != acme {
		t.Errorf("Inspect(cut short) = %q, %v", f.Prefix, r)
	}
}

func TestKeyPrefix(t *testing.T) {
	k, _ := acme.Generate()
	if got := acme.KeyPrefix(k); got != k[:len(acme.Prefix)+8] {
		t.Errorf("KeyPrefix(%q) = %q", k, got)
	}
	// Never more than the prefix of a string that is not a key.
	for _, s := range []string{k[:len(k)-1], "acme_live_secretsecretsecret", "other"} {
		if got := acme.KeyPrefix(s); got != acme.Prefix {
			t.Errorf("KeyPrefix(%q) = %q, want the prefix alone", s, got)
		}
	}
}

// The regular expression and the gitleaks rule of the notes
// (/work/notes/keyformat.md), checked here as written there.
const (
	docRegexp     = `\bacme_live_[0-9A-Za-z]{36}\b`
	docAnyRegexp  = `\b[A-Za-z][A-Za-z0-9_]{1,30}_[0-9A-Za-z]{36}\b`
	docGitleaksRe = `\b(acme_live_[0-9A-Za-z]{36})\b`
	docEntropy    = 3.5
)

func TestDocRegexps(t *testing.T) {
	if got := acme.Pattern(); got != docRegexp {
		t.Errorf("Pattern() = %s, the notes say %s", got, docRegexp)
	}
	if AnyPattern != docAnyRegexp {
		t.Errorf("AnyPattern = %s, the notes say %s", AnyPattern, docAnyRegexp)
	}
	one, any, gl := regexp.MustCompile(docRegexp), regexp.MustCompile(docAnyRegexp), regexp.MustCompile(docGitleaksRe)
	for range 2000 {
		k, _ := acme.Generate()
		for _, text := range []string{
			k,
			"Authorization: Bearer " + k + "\r\n",
			`API_KEY="` + k + `"`,
			"curl -H 'X-API-Key: " + k + "' https://api.example.com",
			"https://api.example.com/items?api_key=" + k + "&page=2",
			"key=" + k + ",",
		} {
			if got := one.FindString(text); got != k {
				t.Fatalf("%s finds %q in %q, want the key", docRegexp, got, text)
			}
			if got := any.FindString(text); got != k && !strings.HasSuffix(got, k) {
				t.Fatalf("%s finds %q in %q, want the key", docAnyRegexp, got, text)
			}
			m := gl.FindStringSubmatch(text)
			if m == nil || m[1] != k {
				t.Fatalf("gitleaks rule finds %q in %q", m, text)
			}
			if e := shannon(m[1][len(acme.Prefix):]); e < docEntropy {
				t.Fatalf("the secret part of %q has entropy %.2f, below the rule's %.1f: gitleaks would skip it", k, e, docEntropy)
			}
		}
		// Candidates the regexps find, Inspect sorts.
		if f, r := Inspect(any.FindString("token " + k + " end")); f != acme || r != WellFormed {
			t.Fatalf("Inspect of the candidate: %q %v", f.Prefix, r)
		}
	}
	k, _ := acme.Generate()
	for _, text := range []string{
		k + "0",                         // longer: no key
		"x" + k,                         // run into a word before it
		k[:len(k)-1],                    // shorter
		"acme_live_" + "-" + k[11:],     // not base62
		"sk_" + strings.Repeat("a", 43), // the default format
		"acme_live_" + strings.Repeat("x", 36)[:35],
	} {
		if got := one.FindString(text); got != "" {
			t.Errorf("%s finds %q in %q", docRegexp, got, text)
		}
	}
	// A placeholder in documentation is found by the regexp but falls
	// below the entropy, and fails the checksum.
	placeholder := "acme_live_" + strings.Repeat("x", 36)
	if e := shannon(placeholder[10:]); e >= docEntropy {
		t.Errorf("a placeholder's entropy %.2f is not below %.1f", e, docEntropy)
	}
	if acme.Check(placeholder) != WrongChecksum {
		t.Error("the placeholder passes Check")
	}
}

// shannon is the Shannon entropy of s in bits per character, as gitleaks
// computes it for a rule's entropy.
func shannon(s string) float64 {
	counts := map[rune]int{}
	for _, r := range s {
		counts[r]++
	}
	e := 0.0
	for _, n := range counts {
		p := float64(n) / float64(len(s))
		e -= p * math.Log2(p)
	}
	return e
}

func TestCheckAllocatesNothing(t *testing.T) {
	k, _ := acme.Generate()
	bad := k[:len(k)-1] + "x"
	if n := testing.AllocsPerRun(100, func() {
		_ = acme.Check(k)
		_ = acme.Check(bad)
		_ = acme.Check("sk_whatever")
		_ = acme.Malformed(k)
		_ = acme.Malformed(bad)
	}); n != 0 {
		t.Errorf("Check allocates %.0f times", n)
	}
}

func FuzzCheck(f *testing.F) {
	k, _ := acme.Generate()
	for _, s := range []string{"", "acme_live_", k, k[:len(k)-1], k + "x", "acme_live_" + strings.Repeat("\xff", 36), "sk_x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r := acme.Check(s)
		if r == WellFormed {
			// Well formed means exactly the layout, and the checksum.
			if !strings.HasPrefix(s, acme.Prefix) || len(s) != acme.Len() {
				t.Fatalf("Check(%q) = WellFormed", s)
			}
			random := s[len(acme.Prefix) : len(acme.Prefix)+RandomLen]
			if s[len(s)-ChecksumLen:] != base62Independent(crc32.ChecksumIEEE([]byte(random))) {
				t.Fatalf("Check(%q) = WellFormed with a wrong checksum", s)
			}
		}
		if !strings.HasPrefix(s, acme.Prefix) && r != NotThisFormat {
			t.Fatalf("Check(%q) = %v without the prefix", s, r)
		}
		// The quick test calls malformed exactly what Check does, but
		// for a bad character in the random part beside a checksum that
		// matches it.
		if quick := acme.Malformed(s); quick != r.Malformed() {
			random := s[len(acme.Prefix) : len(acme.Prefix)+RandomLen]
			if quick || r != BadCharacter || s[len(s)-ChecksumLen:] != base62Independent(crc32.ChecksumIEEE([]byte(random))) {
				t.Fatalf("Format.Malformed(%q) = %v, Check = %v", s, quick, r)
			}
		}
		_ = r.String()
		if f, r2 := Inspect(s); r2 != NotThisFormat && f.Validate() != nil {
			t.Fatalf("Inspect(%q) = %q, %v: an invalid format", s, f.Prefix, r2)
		}
		_ = acme.KeyPrefix(s)
	})
}

var benchSink int

// BenchmarkCheck measures Check against what it saves on a refusal: the
// SHA-256 of the key that a lookup starts with.
//
//	go test -run '^$' -bench . -benchmem ./keyformat
func BenchmarkCheck(b *testing.B) {
	k, _ := acme.Generate()
	typo := k[:len(k)-1] + "A"
	if k[len(k)-1] == 'A' {
		typo = k[:len(k)-1] + "B"
	}
	for _, c := range []struct{ name, s string }{{"well-formed", k}, {"wrong-checksum", typo}, {"not-this-format", "sk_1mTbK1F2x8bH7kJ0oXw4Qn3rVv5yZt9uLc6dEa2fGhI"}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				benchSink += int(acme.Check(c.s))
			}
		})
		// The request path's test of the same string.
		b.Run("malformed/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if acme.Malformed(c.s) {
					benchSink++
				}
			}
		})
	}
	b.Run("sha256-of-the-key", func(b *testing.B) {
		b.ReportAllocs()
		buf := []byte(typo)
		for b.Loop() {
			sum := sha256.Sum256(buf)
			benchSink += int(sum[0])
		}
	})
}
