package modbus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/clock"
)

// Transport carries one request frame to a slave and returns its response
// frame. It returns when ctx is done if no answer comes; a slave that stays
// silent is reported by the Client as a timeout.
type Transport interface {
	Transact(ctx context.Context, req []byte) ([]byte, error)
}

// ClientConfig configures a Client. Zero fields take the defaults.
type ClientConfig struct {
	Slave      byte          // default 0x11
	Timeout    time.Duration // per try; default 1 s
	Tries      int           // default 3
	RetryDelay time.Duration // between tries; default 200 ms
	Clock      clock.Clock   // default clock.Real
}

// Defaults of ClientConfig.
const (
	DefaultSlave      byte = 0x11
	DefaultTimeout         = time.Second
	DefaultTries           = 3
	DefaultRetryDelay      = 200 * time.Millisecond
)

// Stats are a Client's counters since it was made.
type Stats struct {
	Requests    uint64 // ReadRegisters/WriteRegister operations (a verified write counts its read-back too)
	Retries     uint64 // tries after a failed one
	CRCErrors   uint64 // responses with a bad CRC
	FrameErrors uint64 // responses with a good CRC but wrong shape
	Exceptions  uint64 // exception responses
	Timeouts    uint64 // tries without an answer in time
	Failures    uint64 // operations that failed after all tries
}

// ErrVerify means a written register read back a different value.
var ErrVerify = errors.New("modbus: write not verified")

// Client is the device's protocol adapter: it reads and writes registers of
// one slave over a Transport with a timeout per try, a bounded number of
// tries with a delay between them, CRC and exception checks, and counters.
// It is safe for concurrent use; operations are serialised as on a bus.
type Client struct {
	tr  Transport
	cfg ClientConfig

	bus   sync.Mutex // held for a whole operation: one transaction at a time
	mu    sync.Mutex // guards stats
	stats Stats
}

// NewClient returns a Client for the slave behind tr.
func NewClient(tr Transport, cfg ClientConfig) *Client {
	if cfg.Slave == 0 {
		cfg.Slave = DefaultSlave
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Tries <= 0 {
		cfg.Tries = DefaultTries
	}
	if cfg.RetryDelay < 0 {
		cfg.RetryDelay = 0
	} else if cfg.RetryDelay == 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	return &Client{tr: tr, cfg: cfg}
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func (c *Client) count(f func(*Stats)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.stats)
}

// ReadRegisters reads count holding registers starting at addr.
func (c *Client) ReadRegisters(ctx context.Context, addr, count uint16) ([]uint16, error) {
	if count == 0 || count > MaxReadCount {
		return nil, fmt.Errorf("modbus: read %d registers at %d: count must be 1-%d", count, addr, MaxReadCount)
	}
	c.bus.Lock()
	defer c.bus.Unlock()
	var values []uint16
	err := c.do(ctx, EncodeReadRequest(c.cfg.Slave, addr, count), func(resp []byte) (err error) {
		values, err = DecodeReadResponse(resp, c.cfg.Slave, count)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("modbus: read %d registers at %d: %w", count, addr, err)
	}
	return values, nil
}

// WriteRegister writes value at addr and verifies it by reading it back.
func (c *Client) WriteRegister(ctx context.Context, addr, value uint16) error {
	c.bus.Lock()
	defer c.bus.Unlock()
	err := c.do(ctx, EncodeWriteRequest(c.cfg.Slave, addr, value), func(resp []byte) error {
		return DecodeWriteResponse(resp, c.cfg.Slave, addr, value)
	})
	if err != nil {
		return fmt.Errorf("modbus: write %d at %d: %w", value, addr, err)
	}
	var got []uint16
	err = c.do(ctx, EncodeReadRequest(c.cfg.Slave, addr, 1), func(resp []byte) (err error) {
		got, err = DecodeReadResponse(resp, c.cfg.Slave, 1)
		return err
	})
	if err != nil {
		return fmt.Errorf("modbus: write %d at %d: read back: %w", value, addr, err)
	}
	if got[0] != value {
		c.count(func(s *Stats) { s.Failures++ })
		return fmt.Errorf("%w: wrote %d at %d, read back %d", ErrVerify, value, addr, got[0])
	}
	return nil
}

// do runs one operation: up to Tries transactions of req, each decoded by
// decode, with RetryDelay between them. It stops early on a definitive
// exception (anything but slave device failure) or when ctx is done.
func (c *Client) do(ctx context.Context, req []byte, decode func([]byte) error) error {
	c.count(func(s *Stats) { s.Requests++ })
	var last error
	for try := range c.cfg.Tries {
		if try > 0 {
			c.count(func(s *Stats) { s.Retries++ })
			if err := c.cfg.Clock.Sleep(ctx, c.cfg.RetryDelay); err != nil {
				last = err
				break
			}
		}
		retry, err := c.try(ctx, req, decode)
		if err == nil {
			return nil
		}
		last = err
		if !retry {
			break
		}
	}
	c.count(func(s *Stats) { s.Failures++ })
	return last
}

// try runs one transaction and reports whether a failure is worth a retry.
func (c *Client) try(ctx context.Context, req []byte, decode func([]byte) error) (retry bool, err error) {
	tctx, cancel := clock.WithTimeout(ctx, c.cfg.Clock, c.cfg.Timeout)
	defer cancel()
	resp, err := c.tr.Transact(tctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if errors.Is(context.Cause(tctx), context.DeadlineExceeded) {
			c.count(func(s *Stats) { s.Timeouts++ })
			return true, fmt.Errorf("timeout after %v: %w", c.cfg.Timeout, context.DeadlineExceeded)
		}
		return true, fmt.Errorf("transport: %w", err)
	}
	err = decode(resp)
	var ex *ExceptionError
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, ErrCRC):
		c.count(func(s *Stats) { s.CRCErrors++ })
	case errors.As(err, &ex):
		c.count(func(s *Stats) { s.Exceptions++ })
		return ex.Code == ExDeviceFailure, err
	default:
		c.count(func(s *Stats) { s.FrameErrors++ })
	}
	return true, err
}
