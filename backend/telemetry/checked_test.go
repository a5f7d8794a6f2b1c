package telemetry

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/backendtest"
	"github.com/ecowatt/ecowatt/topics/envelope"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// scriptCounter counts the scripts a client runs (EVALSHA and EVAL).
type scriptCounter struct{ n atomic.Int64 }

func (c *scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			c.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestIngestCheckedOneScript: with the replay check in the ingest script,
// a batch costs one script, and every replay verdict of the backend's own
// check holds: a replayed or stale nonce and an unknown device store
// nothing, and a batch refused before the script (a bad body) still
// spends its nonce.
func TestIngestCheckedOneScript(t *testing.T) {
	e := newEnv(t, nil)
	var scripts scriptCounter
	e.rdb.AddHook(&scripts)
	svc, err := backend.New(backend.Config{
		Redis: e.rdb, Prefix: e.prefix, Vault: backendtest.Vault(t), Bus: backendtest.Bus[backend.Message](t),
		Logger: zerolog.Nop(), BcryptCost: bcrypt.MinCost, Now: e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := svc.Provision(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	ingest := e.st.IngestChecked(svc)
	batch := func(seq uint64, nonce uint64) envelope.Message {
		m := body(t, message(t, mkBatch(seq, t0.Add(-time.Duration(10-seq)*time.Minute), 3, 0, 1)))
		m.Nonce = nonce
		return m
	}
	stored := func() int64 {
		n, err := e.rdb.HGet(ctx, e.st.keysOf("d1").state, "batches").Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return n
	}

	if err := ingest(ctx, "d1", batch(0, 99)); err != nil { // loads the script
		t.Fatal(err)
	}
	before := scripts.n.Load()
	if err := ingest(ctx, "d1", batch(1, 100)); err != nil {
		t.Fatal(err)
	}
	if got := scripts.n.Load() - before; got != 1 {
		t.Errorf("one batch ran %d scripts, want 1", got)
	}
	if stored() != 2 {
		t.Fatalf("batches stored %d, want 2", stored())
	}
	for _, tc := range []struct {
		name  string
		dev   string
		m     envelope.Message
		want  error
		check func(error) bool
	}{
		{name: "replayed nonce", dev: "d1", m: batch(2, 100), want: envelope.ErrReplay},
		{name: "stale nonce", dev: "d1", m: batch(3, 10), want: envelope.ErrStale},
		{name: "nonce jump", dev: "d1", m: batch(4, 100+backend.MaxNonceJump+1), want: backend.ErrNonceJump},
		{name: "unknown device", dev: "nobody", m: batch(5, 200), check: func(err error) bool { return backend.ErrorCode(err) == backend.CodeNotFound }},
	} {
		err := ingest(ctx, tc.dev, tc.m)
		ok := tc.check != nil && tc.check(err) || tc.want != nil && errors.Is(err, tc.want)
		if !ok {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if stored() != 2 {
		t.Fatalf("batches stored after refused nonces %d, want 2", stored())
	}
	bad := envelope.Message{Nonce: 101, Body: []byte(`{"telemetry":{"v":1}}`)}
	if err := ingest(ctx, "d1", bad); backend.ErrorCode(err) != backend.CodeInvalid {
		t.Fatalf("bad body: %v, want CodeInvalid", err)
	}
	if err := ingest(ctx, "d1", batch(6, 101)); !errors.Is(err, envelope.ErrReplay) {
		t.Fatalf("a batch on the nonce of a refused body: %v, want a replay", err)
	}
	if err := ingest(ctx, "d1", batch(7, 102)); err != nil || stored() != 3 {
		t.Fatalf("next batch: %v, %d stored, want 3", err, stored())
	}
}

// BenchmarkIngestWithReplayCheck compares, in one run, a batch's replay
// check and store as two scripts (the backend's check, then Ingest) and as
// one (IngestChecked). It reports batches per CPU-second of this process
// and Redis's CPU per batch (INFO cpu; Redis is shared with whatever else
// runs against it).
func BenchmarkIngestWithReplayCheck(b *testing.B) {
	for _, mode := range []string{"two-scripts", "one-script"} {
		b.Run(mode, func(b *testing.B) {
			e := newEnv(b, func(c *Config) { c.Retention = 365 * 24 * time.Hour })
			svc, err := backend.New(backend.Config{
				Redis: e.rdb, Prefix: e.prefix, Vault: backendtest.Vault(b), Bus: backendtest.Bus[backend.Message](b),
				Logger: zerolog.Nop(), BcryptCost: bcrypt.MinCost, Now: e.clock.Now,
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := svc.Provision(ctx, "d1"); err != nil {
				b.Fatal(err)
			}
			checked := e.st.IngestChecked(svc)
			msgs := make([]envelope.Message, b.N+1) // every batch new: the full store path
			for i := range msgs {
				msgs[i] = body(b, message(b, mkBatch(uint64(i+1), t0.Add(-24*time.Hour+time.Duration(i)*time.Second), 3, 0, 1, 2, 3)))
			}
			run := func(i int) error {
				m := msgs[i]
				m.Nonce = uint64(i + 1)
				if mode == "one-script" {
					return checked(ctx, "d1", m)
				}
				if err := svc.AcceptNonce(ctx, "d1", m.Nonce); err != nil {
					return err
				}
				return e.st.Ingest(ctx, "d1", m)
			}
			if err := run(0); err != nil { // loads the scripts
				b.Fatal(err)
			}
			redisCPU := func() float64 {
				info, err := e.rdb.Info(ctx, "cpu").Result()
				if err != nil {
					b.Fatal(err)
				}
				var sum float64
				for _, l := range strings.Split(info, "\n") {
					k, v, _ := strings.Cut(strings.TrimSpace(l), ":")
					if k == "used_cpu_sys" || k == "used_cpu_user" {
						f, _ := strconv.ParseFloat(v, 64)
						sum += f
					}
				}
				return sum
			}
			cpu0, r0 := processCPU(), redisCPU()
			b.ResetTimer()
			for i := range b.N {
				if err := run(i + 1); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu, rc := processCPU()-cpu0, redisCPU()-r0
			b.ReportMetric(float64(b.N)/cpu.Seconds(), "msgs/cpu-s")
			b.ReportMetric(rc*1e6/float64(b.N), "redis-µs/msg")
		})
	}
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
