package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// Writes that never block a publisher on a client's socket.
//
// mochi writes a packet to the connection while it holds the client's
// lock, with no write deadline of its own (only the read deadline of 1.5
// keepalives, which a client that keeps sending refreshes). The same lock
// is taken by NextPacketID when any goroutine publishes a QoS 1 message to
// that client. So a client that stops reading stalls its write loop inside
// Write, under the lock, and every publisher to it (for downlinks, a
// backend shard worker, and behind it every device of the shard) waits
// with it (issue 18, reliability 6).
//
// writeConn, under every connection mochi sees (TCP, under TLS and under
// WebSocket), makes Write a copy into a per-connection backlog drained by
// its own goroutine, so the lock is held for a copy only. The drainer
// writes with a deadline of the client's slow timeout; a client whose
// socket accepts nothing for that long, or a device whose backlog passes
// ClientWriteBacklog, is disconnected as a slow client. An operator's
// Write waits instead while its backlog is full (flow.go's lossless
// backpressure for viewers that read slowly), still bounded by its slow
// timeout without progress.

// closeFlush bounds how long Close lets the drainer flush what is queued
// (a refused CONNACK, a DISCONNECT) before the socket is closed.
const closeFlush = time.Second

var errBacklogFull = errors.New("outbound backlog full")

type writeConn struct {
	net.Conn // the raw connection; reads and addresses pass through

	mu       sync.Mutex // guards the fields below
	cond     *sync.Cond // on mu: pending shrank or err was set
	buf      []byte     // bytes not yet handed to the drainer
	pending  int        // bytes queued and not yet written (buf and the drainer's)
	writing  bool       // a drainer goroutine runs
	closed   bool       // Close was called: Write fails
	err      error      // the connection failed (stall, write error): sticky
	limit    int        // backlog bound
	timeout  time.Duration
	device   bool                // over the limit: disconnect (device) or wait (operator)
	onSlow   func(detail string) // set once the client is known; nil: just close
	rawDone  bool                // the raw connection is closed
	slowSeen bool                // reportSlow was called
}

func newWriteConn(c net.Conn, limit int, timeout time.Duration) *writeConn {
	w := &writeConn{Conn: c, limit: limit, timeout: timeout, device: true}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// setClient sets the slow timeout, the policy over the limit and what to
// do when the client is found slow, once it has logged in.
func (w *writeConn) setClient(timeout time.Duration, device bool, onSlow func(detail string)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timeout, w.device, w.onSlow = timeout, device, onSlow
}

// Write queues p for the drainer. It does not wait on the socket, except
// for an operator whose backlog is full.
func (w *writeConn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for !w.device && w.err == nil && !w.closed && w.pending > 0 && w.pending+len(p) > w.limit {
		w.cond.Wait()
	}
	switch {
	case w.closed:
		return 0, net.ErrClosed
	case w.err != nil:
		return 0, w.err
	case w.pending > 0 && w.pending+len(p) > w.limit: // a device (one packet alone always fits)
		w.failLocked(errBacklogFull, fmt.Sprintf("outbound backlog above %d bytes", w.limit))
		return 0, errBacklogFull
	}
	w.buf = append(w.buf, p...)
	w.pending += len(p)
	if !w.writing {
		w.writing = true
		go w.drain()
	}
	return len(p), nil
}

// failLocked records err, wakes waiters and cuts the client off: through
// onSlow (which stops the mochi client, then closes us) off this
// goroutine, which may hold the client's lock, or by closing the socket.
func (w *writeConn) failLocked(err error, detail string) {
	if w.err != nil {
		return
	}
	w.err = err
	w.buf = nil
	w.cond.Broadcast()
	if w.onSlow != nil && !w.closed && (errors.Is(err, errBacklogFull) || errors.Is(err, os.ErrDeadlineExceeded)) {
		go w.onSlow(detail) // stops the client with its cause, then Close closes the socket
		return
	}
	w.closeRawLocked()
}

// reportSlow reports true the first time the client is found slow, so
// that the admission path and the drainer count one disconnect.
func (w *writeConn) reportSlow() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := !w.slowSeen
	w.slowSeen = true
	return first
}

func (w *writeConn) closeRawLocked() {
	if !w.rawDone {
		w.rawDone = true
		_ = w.Conn.Close()
	}
}

// rawClosed reports whether the socket is closed.
func (w *writeConn) rawClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rawDone
}

// drain writes the backlog until it is empty or the connection fails.
func (w *writeConn) drain() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil && len(w.buf) > 0 {
		out := w.buf
		w.buf = nil
		timeout := w.timeout
		if w.closed {
			timeout = min(timeout, closeFlush)
		}
		w.mu.Unlock()
		err := w.writeOut(out, timeout)
		w.mu.Lock()
		if err != nil {
			detail := "write failed: " + err.Error()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				detail = "socket accepted nothing for " + timeout.String()
			}
			w.failLocked(err, detail)
		}
	}
	w.writing = false
	if w.closed {
		w.closeRawLocked()
	}
}

// writeOut writes out, with a fresh deadline after every write that made
// progress: only a socket that accepts nothing for timeout fails.
func (w *writeConn) writeOut(out []byte, timeout time.Duration) error {
	for len(out) > 0 {
		_ = w.Conn.SetWriteDeadline(time.Now().Add(timeout))
		n, err := w.Conn.Write(out)
		out = out[n:]
		w.mu.Lock()
		w.pending -= n
		w.cond.Broadcast()
		w.mu.Unlock()
		if err != nil && (n == 0 || !errors.Is(err, os.ErrDeadlineExceeded)) {
			return err
		}
	}
	return nil
}

// Close stops writes; what is queued is flushed (at most closeFlush)
// before the socket closes. Reads fail at once.
func (w *writeConn) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	w.cond.Broadcast()
	if w.writing && w.err == nil {
		_ = w.Conn.SetReadDeadline(time.Unix(1, 0)) // unblock the reader now
		return nil
	}
	w.closeRawLocked()
	return nil
}

// SetDeadline sets the read deadline only: mochi refreshes it on every
// packet read, and the drainer owns the write deadline.
func (w *writeConn) SetDeadline(t time.Time) error { return w.SetReadDeadline(t) }

func (w *writeConn) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	return w.Conn.SetReadDeadline(t)
}

// SetWriteDeadline is ignored: writes never block (see Write).
func (w *writeConn) SetWriteDeadline(time.Time) error { return nil }

// writeConnOf finds the writeConn under the connection mochi holds.
func writeConnOf(c net.Conn) *writeConn {
	switch c := c.(type) {
	case *writeConn:
		return c
	case *tls.Conn:
		return writeConnOf(c.NetConn())
	case *wsConn:
		return writeConnOf(c.Conn)
	}
	return nil
}

// writeListener wraps every accepted connection in a writeConn.
type writeListener struct {
	net.Listener
	s *Server
}

func (l *writeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newWriteConn(c, l.s.cfg.ClientWriteBacklog, l.s.cfg.SlowClientTimeout), nil
}
