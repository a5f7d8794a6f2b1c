package envelope

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"reflect"
	"testing"
)

// rankVector is one case of testdata/rank_windows.json: steps from an
// empty RankWindow, each nonce with its verdict, and the end state.
type rankVector struct {
	Name  string       `json:"name"`
	Steps []rankStep   `json:"steps"`
	End   rankEndState `json:"end"`
}

type rankStep struct {
	Nonce  uint64 `json:"nonce"`
	Result string `json:"result"` // accept, replay or stale
}

type rankEndState struct {
	Floor uint64   `json:"floor"`
	Seen  []uint64 `json:"seen"`
}

func verdict(err error) string {
	switch {
	case err == nil:
		return "accept"
	case errors.Is(err, ErrReplay):
		return "replay"
	case errors.Is(err, ErrStale):
		return "stale"
	}
	return err.Error()
}

// rankVectors builds the vector cases. The first is the bug of issue 18:
// two downlinks numbered from the µs clock 300 apart, delivered in reverse
// order; Window refuses the older one, RankWindow accepts both.
func rankVectors() []rankVector {
	const t0 = 1767225600123456 // 2026-01-01T00:00:00.123456Z in µs
	cases := []struct {
		name   string
		nonces []uint64
	}{
		{"clock_numbered_reordered", []uint64{t0 + 300, t0, t0, t0 + 300}},
		{"late_after_63_newer", append(append([]uint64{t0}, seqStep(t0+1000, 1000, 63)...), t0, t0+500)},
		{"evicted_after_64_newer", append(append([]uint64{t0 + 500}, seqStep(t0+1000, 1000, 64)...), t0+500, t0+600)},
		{"zero_and_repeat", []uint64{0, 1, 1, 2}},
	}
	var out []rankVector
	for _, c := range cases {
		var w RankWindow
		v := rankVector{Name: c.name}
		for _, n := range c.nonces {
			v.Steps = append(v.Steps, rankStep{n, verdict(w.Accept(n))})
		}
		v.End = rankEndState(w)
		out = append(out, v)
	}
	return out
}

func seqStep(from, step uint64, n int) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = from + uint64(i)*step
	}
	return s
}

// TestRankWindowVectors checks testdata/rank_windows.json against the code
// (or rewrites it under -update) and spells out what the cases show.
func TestRankWindowVectors(t *testing.T) {
	got := rankVectors()
	const path = "testdata/rank_windows.json"
	if *update {
		b, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (regenerate with: go test ./topics/envelope -run TestRankWindowVectors -update)", err)
	}
	var want []rankVector
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s differs from the code: got %+v", path, got)
	}
	results := func(v rankVector) []string {
		var r []string
		for _, s := range v.Steps {
			r = append(r, s.Result)
		}
		return r
	}
	expect := map[string][]string{
		"clock_numbered_reordered": {"accept", "accept", "replay", "replay"},
		"late_after_63_newer":      append(append([]string{"accept"}, repeat("accept", 63)...), "replay", "accept"),
		"evicted_after_64_newer":   append(append([]string{"accept"}, repeat("accept", 64)...), "stale", "accept"),
		"zero_and_repeat":          {"stale", "accept", "replay", "accept"},
	}
	for _, v := range got {
		if !reflect.DeepEqual(results(v), expect[v.Name]) {
			t.Errorf("%s: results %v, want %v", v.Name, results(v), expect[v.Name])
		}
	}
	// The old value-counting Window refuses the older message of the first case.
	var w Window
	newer, older := got[0].Steps[0].Nonce, got[0].Steps[1].Nonce
	if err := w.Accept(newer); err != nil {
		t.Fatal(err)
	}
	if err := w.Accept(older); !errors.Is(err, ErrStale) {
		t.Errorf("Window accepted %d after %d (%v): the case no longer shows the bug", older, newer, err)
	}
}

func repeat(s string, n int) []string {
	r := make([]string, n)
	for i := range r {
		r[i] = s
	}
	return r
}

// TestRankWindowAtMostOnce offers random reorderings with duplicates and
// checks that each nonce is accepted at most once, and that any nonce not
// older than the 64 highest accepted is accepted.
func TestRankWindowAtMostOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var w RankWindow
		accepted := map[uint64]bool{}
		base := uint64(1 + rng.IntN(1000))
		for range 400 {
			n := base + uint64(rng.IntN(300))*uint64(1+rng.IntN(500))
			before := w
			err := w.Accept(n)
			switch {
			case err == nil && accepted[n]:
				t.Fatalf("nonce %d accepted twice", n)
			case err == nil:
				accepted[n] = true
			case errors.Is(err, ErrReplay) && !accepted[n]:
				t.Fatalf("nonce %d refused as a replay but never accepted", n)
			case errors.Is(err, ErrStale) && n > before.Floor:
				t.Fatalf("nonce %d refused as stale above floor %d", n, before.Floor)
			}
			if len(w.Seen) > WindowSize {
				t.Fatalf("window holds %d nonces", len(w.Seen))
			}
		}
	}
}

// TestRankWindowFromWindow: a converted Window gives the same verdict as
// the Window it came from for every nonce near it.
func TestRankWindowFromWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		var w Window
		for range rng.IntN(100) {
			_ = w.Accept(uint64(1 + rng.IntN(200)))
		}
		r := RankWindowFrom(w)
		for n := uint64(0); n < 300; n++ {
			if a, b := verdict(w.Check(n)), verdict(r.Check(n)); a != b {
				t.Fatalf("window %+v: nonce %d: Window %s, RankWindow %s", w, n, a, b)
			}
		}
	}
}
