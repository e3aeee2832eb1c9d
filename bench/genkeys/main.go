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
	"time"
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

	fmt.Fprint(w, "{\n  \"api_keys\": [\n")
	for i := 0; i < *n; i++ {
		raw := newRawKey()
		sum := sha256.Sum256([]byte(raw))
		rec := record{
			ID:        newUUID(),
			Label:     fmt.Sprintf("bench key %d", i),
			KeyHash:   hex.EncodeToString(sum[:]),
			KeyPrefix: raw[:11],
			CreatedAt: created,
		}
		if i == *pick {
			kept, keptID = raw, rec.ID
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

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		log.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
