package broker

import (
	"context"
	"errors"
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
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	gen, err := s.cfg.Presence.DeviceConnected(ctx, id.name)
	if err != nil {
		return err
	}
	id.gen = gen
	return nil
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
	case errors.Is(cause, packets.ErrPacketTooLarge), errors.Is(cause, packets.ErrRejectPacket):
		return CauseRefused
	}
	var code packets.Code
	if errors.As(cause, &code) && code.Code >= packets.ErrUnspecifiedError.Code {
		return CauseRefused
	}
	return CauseClosed
}
