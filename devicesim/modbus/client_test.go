package modbus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
)

// script is a Transport that answers each try with the next step.
type script struct {
	clk   *clock.Fake
	regs  []uint16
	steps []string // "ok", "drop", "crc", "frame", "exc04", "exc02", "stale"
	tries int
	sent  [][]byte
}

func (s *script) Transact(ctx context.Context, req []byte) ([]byte, error) {
	s.sent = append(s.sent, req)
	step := "ok"
	if s.tries < len(s.steps) {
		step = s.steps[s.tries]
	}
	s.tries++
	r, err := DecodeRequest(req)
	if err != nil {
		return nil, err
	}
	var resp []byte
	switch r.Func {
	case FuncReadHolding:
		resp = EncodeReadResponse(r.Slave, s.regs[r.Addr:r.Addr+r.Value])
	case FuncWriteSingle:
		if step != "stale" {
			s.regs[r.Addr] = r.Value
		}
		resp = req
	}
	switch step {
	case "drop":
		if err := s.clk.Sleep(ctx, time.Hour); err != nil {
			return nil, err
		}
		return nil, errors.New("unreachable")
	case "crc":
		resp = append([]byte(nil), resp...)
		resp[len(resp)-1] ^= 0x55
	case "frame":
		resp = EncodeReadResponse(r.Slave+1, []uint16{1})
	case "exc04":
		resp = EncodeException(r.Slave, r.Func, ExDeviceFailure)
	case "exc02":
		resp = EncodeException(r.Slave, r.Func, ExIllegalAddress)
	}
	return resp, nil
}

func TestClientRetries(t *testing.T) {
	tests := []struct {
		name    string
		steps   []string
		wantErr error
		want    Stats
		elapsed time.Duration
	}{
		{"clean", nil, nil, Stats{Requests: 1}, 0},
		{"crc then ok", []string{"crc"}, nil, Stats{Requests: 1, Retries: 1, CRCErrors: 1}, 200 * time.Millisecond},
		{"timeout then ok", []string{"drop"}, nil, Stats{Requests: 1, Retries: 1, Timeouts: 1}, 1200 * time.Millisecond},
		{"device failure then frame then ok", []string{"exc04", "frame"}, nil, Stats{Requests: 1, Retries: 2, Exceptions: 1, FrameErrors: 1}, 400 * time.Millisecond},
		{"three timeouts", []string{"drop", "drop", "drop"}, context.DeadlineExceeded, Stats{Requests: 1, Retries: 2, Timeouts: 3, Failures: 1}, 3400 * time.Millisecond},
		{"illegal address is final", []string{"exc02"}, &ExceptionError{}, Stats{Requests: 1, Exceptions: 1, Failures: 1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := clock.NewFake(time.Unix(0, 0))
			tr := &script{clk: clk, regs: []uint16{10, 11, 12, 13}, steps: tt.steps}
			c := NewClient(tr, ClientConfig{Clock: clk})
			var got []uint16
			var err error
			clk.Drive(func() { got, err = c.ReadRegisters(context.Background(), 1, 2) })
			var ex *ExceptionError
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("err = %v", err)
			case tt.wantErr == nil && (len(got) != 2 || got[0] != 11 || got[1] != 12):
				t.Fatalf("values = %v", got)
			case errors.As(tt.wantErr, &ex) && !errors.As(err, &ex):
				t.Fatalf("err = %v, want an ExceptionError", err)
			case tt.wantErr != nil && !errors.As(tt.wantErr, &ex) && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if s := c.Stats(); s != tt.want {
				t.Fatalf("stats = %+v, want %+v", s, tt.want)
			}
			if d := clk.Now().Sub(time.Unix(0, 0)); d != tt.elapsed {
				t.Fatalf("took %v of clock time, want %v", d, tt.elapsed)
			}
		})
	}
}

func TestClientWrite(t *testing.T) {
	t.Run("verified", func(t *testing.T) {
		clk := clock.NewFake(time.Unix(0, 0))
		tr := &script{clk: clk, regs: make([]uint16, 10), steps: []string{"crc"}}
		c := NewClient(tr, ClientConfig{Clock: clk})
		var err error
		clk.Drive(func() { err = c.WriteRegister(context.Background(), 8, 50) })
		if err != nil || tr.regs[8] != 50 {
			t.Fatalf("err = %v, reg = %d", err, tr.regs[8])
		}
		if s := c.Stats(); s.Requests != 2 || s.CRCErrors != 1 || s.Failures != 0 {
			t.Fatalf("stats = %+v", s)
		}
	})
	t.Run("read back differs", func(t *testing.T) {
		clk := clock.NewFake(time.Unix(0, 0))
		tr := &script{clk: clk, regs: make([]uint16, 10), steps: []string{"stale"}}
		c := NewClient(tr, ClientConfig{Clock: clk})
		err := c.WriteRegister(context.Background(), 8, 50)
		if !errors.Is(err, ErrVerify) || c.Stats().Failures != 1 {
			t.Fatalf("err = %v, stats %+v", err, c.Stats())
		}
	})
	t.Run("bad count", func(t *testing.T) {
		c := NewClient(&script{}, ClientConfig{})
		if _, err := c.ReadRegisters(context.Background(), 0, 0); err == nil {
			t.Fatal("count 0 accepted")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		clk := clock.NewFake(time.Unix(0, 0))
		tr := &script{clk: clk, regs: make([]uint16, 10), steps: []string{"drop"}}
		c := NewClient(tr, ClientConfig{Clock: clk})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error)
		go func() { _, err := c.ReadRegisters(ctx, 0, 1); errc <- err }()
		clk.BlockUntil(context.Background(), 1)
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) || c.Stats().Timeouts != 0 {
			t.Fatalf("err = %v, stats %+v", err, c.Stats())
		}
	})
}
