package broker

import (
	"context"
	"errors"

	"github.com/mochi-mqtt/server/v2/packets"
)

// ErrDeviceDisabled and ErrDeviceDecommissioned are wrapped by a
// DeviceGate refusing a device.
var (
	ErrDeviceDisabled       = errors.New("device disabled")
	ErrDeviceDecommissioned = errors.New("device decommissioned")
)

// DeviceGate may be implemented by a DeviceAuth. AdmitDevice is asked
// after a device's token and client ID have checked, so that only a
// holder of the device's key learns it is disabled (and a wrong token
// still counts as bad_password); its answer must not be cached, because
// another replica may have disabled the device a moment ago.
type DeviceGate interface {
	AdmitDevice(ctx context.Context, id string) error
}

// admit asks devices' DeviceGate, when it has one, whether device id may
// connect, and returns the rejection when not.
func admit(ctx context.Context, devices DeviceAuth, id string) *Rejection {
	g, ok := devices.(DeviceGate)
	if !ok {
		return nil
	}
	switch err := g.AdmitDevice(ctx, id); {
	case err == nil:
		return nil
	case errors.Is(err, ErrDeviceDisabled):
		return &Rejection{Reason: ReasonDisabled, Detail: err.Error()}
	case errors.Is(err, ErrDeviceDecommissioned):
		return &Rejection{Reason: ReasonDecommissioned, Detail: err.Error()}
	default:
		return &Rejection{Reason: ReasonAuthError, Detail: err.Error()}
	}
}

// CloseSession closes the live connection of client clientID on this
// broker, if there is one, and reports whether there was. An MQTT 5
// client is told why (DISCONNECT "not authorized" with reason); 3.1.1 has
// no server DISCONNECT, so its connection is just closed. The backend uses
// it when a device is disabled or decommissioned; a session held by
// another replica's broker is not reached (its reconnect is refused).
func (s *Server) CloseSession(clientID, reason string) bool {
	cl, ok := s.mochi.Clients.Get(clientID)
	if !ok || cl.Net.Inline || cl.Closed() {
		return false
	}
	code := packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: reason}
	if cl.Properties.ProtocolVersion >= 5 {
		_ = s.mochi.DisconnectClient(cl, code)
	} else {
		cl.Stop(code)
	}
	s.log.Info().Str("client", clientID).Str("reason", reason).Msg("session closed")
	return true
}
