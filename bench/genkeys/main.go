// Command genkeys writes an apikey key file with many random keys, for the
// end-to-end benchmark (bench/run.sh). Only the SHA-256 hashes of the keys
// are stored in the key file, as the plugin expects; the raw value of one of
// them is written to a separate file so the benchmark can send it.
//
//	go run ./bench/genkeys -n 100000 -keys keys.json -raw raw-key.txt
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
)

type record struct {
	ID         string  `json:"id"`
	Label      string  `json:"label"`
	KeyHash    string  `json:"key_hash"`
	KeyPrefix  string  `json:"key_prefix"`
	CreatedAt  string  `json:"created_at"`
	LastUsedAt *string `json:"last_used_at"`
}

func main() {
	n := flag.Int("n", 100000, "number of keys to generate")
	keysPath := flag.String("keys", "keys.json", "key file to write (hashes only)")
	rawPath := flag.String("raw", "raw-key.txt", "file to write the raw value of one key to")
	pick := flag.Int("pick", -1, "index of the key whose raw value is kept (default: the middle one)")
	morePath := flag.String("more", "", "file to write the raw values of -count more keys to, one a line, spread over the file")
	count := flag.Int("count", 100, "with -more: how many raw values to keep")
	flag.Parse()
	if *n < 1 {
		log.Fatal("-n must be at least 1")
	}
	if *pick < 0 {
		*pick = *n / 2
	}
	if *pick >= *n {
		log.Fatalf("-pick %d is out of range for -n %d", *pick, *n)
	}

	f, err := os.OpenFile(*keysPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	created := time.Now().UTC().Format("2006-01-02T15:04:05.000000-07:00")
	var kept, keptID string
	var more []string
	every := max(1, *n/max(1, *count))

	fmt.Fprint(w, "{\n  \"api_keys\": [\n")
	for i := 0; i < *n; i++ {
		raw := newRawKey()
		sum := sha256.Sum256([]byte(raw))
		rec := record{
			ID:        uuid.NewString(),
			Label:     fmt.Sprintf("bench key %d", i),
			KeyHash:   hex.EncodeToString(sum[:]),
			KeyPrefix: raw[:11],
			CreatedAt: created,
		}
		if i == *pick {
			kept, keptID = raw, rec.ID
		}
		if *morePath != "" && i%every == every/2 && len(more) < *count {
			more = append(more, raw)
		}
		line, err := json.Marshal(rec)
		if err != nil {
			log.Fatal(err)
		}
		w.WriteString("    ")
		w.Write(line)
		if i < *n-1 {
			w.WriteString(",")
		}
		w.WriteString("\n")
	}
	fmt.Fprint(w, "  ]\n}\n")
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*rawPath, []byte(kept+"\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	if *morePath != "" {
		if err := os.WriteFile(*morePath, []byte(strings.Join(more, "\n")+"\n"), 0o600); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Fprintf(os.Stderr, "genkeys: wrote %d keys to %s; raw value of key %d (id %s) in %s\n",
		*n, *keysPath, *pick, keptID, *rawPath)
}

// newRawKey returns a key shaped like the reference application's:
// "sk_" and 43 URL-safe base64 characters (32 random bytes).
func newRawKey() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		log.Fatal(err)
	}
	return "sk_" + base64.RawURLEncoding.EncodeToString(b[:])
}
