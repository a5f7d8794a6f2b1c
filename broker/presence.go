package broker

import (
	"context"
	"errors"
	"math"
	"net"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Presence learns when a device's connection starts and ends, so that
// presence does not depend on the device's will: a clean DISCONNECT, a
// keepalive timeout and a session takeover send none. The generation
// orders a device's connections: a report about an older connection must
// not mark offline a device that has connected again since.
type Presence interface {
	// DeviceConnected is called once the broker has accepted a device's
	// CONNECT, before its CONNACK; it returns the new connection's
	// generation, above every earlier one of that device. An error refuses
	// the connection (CONNACK "server unavailable").
	DeviceConnected(ctx context.Context, id string) (gen uint64, err error)
	// DeviceDisconnected is called once when connection gen of device id
	// has ended, with one of the Cause* values.
	DeviceDisconnected(ctx context.Context, id string, gen uint64, cause string) error
}

// Why a device's connection ended.
const (
	CauseDisconnect = "disconnect" // the device sent DISCONNECT
	CauseClosed     = "closed"     // the connection broke or was closed without DISCONNECT
	CauseKeepalive  = "keepalive"  // nothing read for 1.5 keepalive intervals
	CauseTakeover   = "takeover"   // a newer connection with the same client ID took the session
	CauseRefused    = "refused"    // the broker closed it (ACL, oversized packet, slow consumer)
	CauseShutdown   = "shutdown"   // the broker is stopping
)

// presenceTimeout bounds one presence call.
const presenceTimeout = 5 * time.Second

// connected asks Presence for a generation for a device's new connection;
// without Presence it returns 0.
func (s *Server) connected(id *identity) error {
	if s.cfg.Presence == nil || !id.device {
		return nil
	}
	// While the call runs, the generation is already in Redis but not yet
	// here: HeldGeneration answers "held" so a sweep does not end it.
	s.mu.Lock()
	s.held.connecting(id.name, 1)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	gen, err := s.cfg.Presence.DeviceConnected(ctx, id.name)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held.connecting(id.name, -1)
	if err != nil {
		return err
	}
	id.gen = gen
	s.held.add(id.name, gen)
	return nil
}

// HeldGeneration returns the newest generation among device id's
// connections on this broker, 0 when it holds none. While a connect of
// the device is being recorded it returns math.MaxUint64: that
// connection's generation is not known yet, so the caller must assume it
// is held. The backend's presence sweep compares it with the device's
// newest generation in Redis (backend/reconcile.go).
func (s *Server) HeldGeneration(id string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held.pending[id] > 0 {
		return math.MaxUint64
	}
	var newest uint64
	for g := range s.held.gens[id] {
		newest = max(newest, g)
	}
	return newest
}

// deviceConns are the device connections a Server holds, by device, with
// the generations Presence gave them. Guarded by Server.mu.
type deviceConns struct {
	gens    map[string]map[uint64]struct{}
	pending map[string]int // connects waiting for Presence.DeviceConnected
}

func (d *deviceConns) connecting(id string, delta int) {
	if d.pending == nil {
		d.pending = map[string]int{}
	}
	if d.pending[id] += delta; d.pending[id] <= 0 {
		delete(d.pending, id)
	}
}

func (d *deviceConns) add(id string, gen uint64) {
	if d.gens == nil {
		d.gens = map[string]map[uint64]struct{}{}
	}
	if d.gens[id] == nil {
		d.gens[id] = map[uint64]struct{}{}
	}
	d.gens[id][gen] = struct{}{}
}

func (d *deviceConns) remove(id string, gen uint64) {
	delete(d.gens[id], gen)
	if len(d.gens[id]) == 0 {
		delete(d.gens, id)
	}
}

// ended reports the end of connection c once, if it belonged to a device
// that Presence gave a generation. OnDisconnect calls it with mochi's stop
// cause; the listener calls it again, with CauseClosed, for connections
// that ended before mochi's read loop (a failed CONNACK write).
func (s *Server) ended(c net.Conn, cause string) {
	if c == nil {
		return
	}
	s.mu.Lock()
	id := s.idents[c]
	report := id != nil && id.gen != 0 && !id.ended
	if report {
		id.ended = true
		s.held.remove(id.name, id.gen)
	}
	s.mu.Unlock()
	if !report {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	if err := s.cfg.Presence.DeviceDisconnected(ctx, id.name, id.gen, cause); err != nil {
		s.log.Error().Err(err).Str("device", id.name).Uint64("gen", id.gen).Str("cause", cause).
			Msg("presence: disconnect not recorded")
	}
}

// disconnectCause names why mochi stopped a client: cause is its
// StopCause, err what its read loop returned.
func disconnectCause(cause, err error) string {
	if cause == nil {
		cause = err
	}
	var ne net.Error
	switch {
	case errors.Is(cause, packets.ErrSessionTakenOver):
		return CauseTakeover
	case errors.Is(cause, packets.CodeDisconnect):
		return CauseDisconnect
	case errors.Is(cause, packets.ErrServerShuttingDown):
		return CauseShutdown
	case errors.As(cause, &ne) && ne.Timeout():
		return CauseKeepalive
	case errors.Is(cause, packets.ErrPacketTooLarge), errors.Is(cause, packets.ErrRejectPacket), errors.Is(cause, errSlowConsumer):
		return CauseRefused
	}
	var code packets.Code
	if errors.As(cause, &code) && code.Code >= packets.ErrUnspecifiedError.Code {
		return CauseRefused
	}
	return CauseClosed
}

// CloseDevice closes this broker's connections of device id whose
// generation is below gen, and returns how many it closed. In replica
// mode a device that connected again through another replica (generation
// gen) may leave its old session here, alive until its keepalive runs
// out; the new holder asks for it to be closed (backend/route). The end
// of each closed connection is reported as usual, and its generation, being
// older, changes no presence.
func (s *Server) CloseDevice(id string, gen uint64) int {
	s.mu.Lock()
	var conns []net.Conn
	for c, ident := range s.idents {
		if ident.device && ident.name == id && ident.gen != 0 && ident.gen < gen && !ident.ended {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close() // mochi's read loop ends; OnDisconnect reports it
	}
	return len(conns)
}
