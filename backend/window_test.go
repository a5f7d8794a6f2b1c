package backend

import (
	"context"
	crand "crypto/rand"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/backend/keyvault"
	"github.com/ecowatt/ecowatt/backend/redistest"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// TestReplayScriptMatchesWindow runs random nonce sequences through the Lua
// window and envelope.Window and requires the same verdict at every step,
// on the real Redis and on the in-process miniredis.
func TestReplayScriptMatchesWindow(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		rdb, prefix := redistest.Client(t)
		testWindowEquivalence(t, rdb, prefix, 32, 250)
	})
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), Protocol: 2})
		defer rdb.Close()
		testWindowEquivalence(t, rdb, "m:", 8, 150)
	})
}

func testWindowEquivalence(t *testing.T, rdb redis.UniversalClient, prefix string, seqs, steps int) {
	master := make([]byte, keyvault.KeySize)
	vault, _ := keyvault.New(master, crand.Reader)
	s, err := New(Config{Redis: rdb, Prefix: prefix, Vault: vault, Bus: backendtest.Bus[Message](t), Logger: zerolog.Nop(), BcryptCost: bcrypt.MinCost})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	verdict := func(err error) string {
		switch {
		case err == nil:
			return "accept"
		case errors.Is(err, envelope.ErrReplay):
			return "replay"
		case errors.Is(err, envelope.ErrStale):
			return "stale"
		}
		return "error: " + err.Error()
	}
	for seq := range seqs {
		dev := "w" + string(rune('a'+seq%26)) + string(rune('a'+seq/26))
		if _, err := s.Provision(ctx, dev); err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(uint64(seq), 42))
		var w envelope.Window
		var start uint64 = 1
		if seq%4 == 3 {
			start = envelope.MaxNonce - 2000 // near the top: exactness of Lua numbers
			// The device got there in steps (a jump above MaxNonceJump
			// is refused): both windows start just below.
			w.High = start - 1
			if err := rdb.Set(ctx, s.keys.RxHigh(dev), w.High, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		next := start
		for step := range steps {
			var n uint64
			switch r.IntN(8) {
			case 0, 1:
				n = w.High + 1 + uint64(r.IntN(3))
			case 2:
				n = w.High + 60 + uint64(r.IntN(10)) // around a full window shift
			case 3, 4:
				n = w.High - min(w.High, uint64(r.IntN(70))) // inside, on and below the window
			case 5:
				n = w.High // replay of the top
			case 6:
				n = next
				next += uint64(r.IntN(5))
			default:
				span := 2
				if w.High > start {
					span += int(w.High - start)
				}
				n = start + uint64(r.IntN(span))
			}
			if n == 0 || n > envelope.MaxNonce {
				n = 1
			}
			want := verdict(w.Accept(n))
			got := verdict(s.acceptNonce(ctx, dev, n))
			if got != want {
				t.Fatalf("seq %d step %d nonce %d (high %d): lua %s, Window %s", seq, step, n, w.High, got, want)
			}
		}
	}
	if err := s.acceptNonce(ctx, "unprovisioned", 5); !errors.Is(err, ErrNotFound) {
		t.Fatalf("acceptNonce on unknown device = %v, want ErrNotFound", err)
	}
}
