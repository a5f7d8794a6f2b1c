package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ecowatt/ecowatt/topics/envelope"
)

// authTimeout bounds one device or operator lookup at connect.
const authTimeout = 5 * time.Second

// hook is the single mochi hook that enforces EcoWatt's rules. Only the
// methods named in Provides are called by mochi.
type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "ecowatt" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSubscribe,
		mqtt.OnSubscribed,
		mqtt.OnSessionEstablish,
		mqtt.OnPacketRead,
		mqtt.OnDisconnect,
		mqtt.OnPublishDropped,
	}, []byte{b})
}

// OnConnect authenticates the client and checks its client ID and will. On
// failure it sends the CONNACK itself, with a precise code, and returns the
// code so that mochi closes the connection.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	id, rej, code := s.authenticateOffStack(cl, pk) // connectwork.go
	if rej == nil && cl.Properties.Will.Flag != 0 &&
		!allowWill(id, cl.Properties.Will.TopicName, cl.Properties.Will.Retain) {
		rej = &Rejection{Reason: ReasonACLWill, Operator: !id.device, Detail: fmt.Sprintf("will topic %q retain=%t",
			cl.Properties.Will.TopicName, cl.Properties.Will.Retain)}
		code = packets.ErrNotAuthorized
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrBadUsernameOrPassword // v3 "not authorized"
		}
	}
	if rej == nil {
		if err := s.connectedOffStack(id); err != nil {
			rej, code = &Rejection{Reason: ReasonAuthError, Detail: "presence: " + err.Error()}, packets.ErrServerUnavailable
		}
	}
	if rej != nil {
		rej.Username, rej.ClientID = string(pk.Connect.Username), cl.ID
		s.reject(*rej)
		if code == packets.ErrNotAuthorized && cl.Properties.ProtocolVersion < 5 {
			// mochi maps only ErrBadUsernameOrPassword to 3.1.1's "not
			// authorized" (0x05); 0x87 unmapped is no 3.1.1 code, and
			// paho 3.1.1 took it for success.
			code = packets.ErrBadUsernameOrPassword
		}
		_ = s.mochi.SendConnack(cl, code, false, nil)
		return code
	}
	s.setIdentity(cl.Net.Conn, id)
	if wc := writeConnOf(cl.Net.Conn); wc != nil {
		wc.setClient(s.slowTimeout(id), id.device, func(detail string) { s.dropSlow(cl, detail) })
	}
	return nil
}

// OnConnectAuthenticate admits the clients OnConnect accepted.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.s.identityOf(cl) != nil
}

// authenticate decides who a connecting client is. A source address or
// operator name with too many recent failures is refused before any
// lookup (throttle.go).
func (s *Server) authenticate(cl *mqtt.Client, pk packets.Packet) (*identity, *Rejection, packets.Code) {
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	clientID := cl.ID
	if cl.Properties.Props.AssignedClientID != "" {
		clientID = "" // the client sent none; mochi made up a unique one
	}
	name, addr, now := string(pk.Connect.Username), remoteHost(cl.Net.Remote), s.cfg.Now()
	if rej := s.logins.Check(now, addr, name); rej != nil {
		code := packets.ErrConnectionRateExceeded
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrServerUnavailable // 3.1.1 has no better code; clients back off
		}
		return nil, rej, code
	}
	id, rej, code := authenticate(ctx, s.cfg.Devices, s.cfg.Operators, now, name, string(pk.Connect.Password), clientID)
	s.logins.Outcome(now, addr, name, id != nil && !id.device, rej)
	return id, rej, code
}

// remoteHost is the host part of a remote address ("" when unknown).
func remoteHost(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// backendClientPrefix starts the client IDs of backend replicas on an
// external broker (cmd/ecowatt: "ecowatt-" + replica).
const backendClientPrefix = "ecowatt-"

// operatorClientID returns why an operator called name may not use
// clientID, or "" if it may: the ID must be name or start with name+"-",
// and must not be mochi's inline client's or a backend replica's. An empty
// clientID means the broker assigns a fresh one.
func operatorClientID(name, clientID string) string {
	switch {
	case clientID == "":
		return ""
	case clientID == mqtt.InlineClientId:
		return fmt.Sprintf("client id %q is reserved for the broker", clientID)
	case strings.HasPrefix(clientID, backendClientPrefix):
		return fmt.Sprintf("client id %q is reserved for the backend", clientID)
	case clientID != name && !strings.HasPrefix(clientID, name+"-"):
		return fmt.Sprintf("operator client id %q must be %q or start with %q", clientID, name, name+"-")
	}
	return ""
}

// authenticate applies the connect rules to a username, password and client
// ID; it is shared by the embedded broker and Authenticator.
func authenticate(ctx context.Context, devices DeviceAuth, operators OperatorAuth, now time.Time,
	name, password, clientID string) (*identity, *Rejection, packets.Code) {
	if name == "" {
		return nil, &Rejection{Reason: ReasonUnknownDevice, Detail: "no username"}, packets.ErrBadUsernameOrPassword
	}
	keys, err := devices.DeviceKeys(ctx, name)
	switch {
	case err == nil:
		err := envelope.VerifyPassword(keys, name, password, now)
		if rv, ok := devices.(RotatingDeviceAuth); ok && errors.Is(err, envelope.ErrPasswordMAC) {
			err = rv.VerifyDevicePassword(ctx, name, password, now) // a key rotation's overlap
		}
		if err != nil {
			reason := ReasonBadPassword
			if errors.Is(err, envelope.ErrPasswordExpired) {
				reason = ReasonExpiredPassword
			}
			return nil, &Rejection{Reason: reason, Detail: err.Error()}, packets.ErrBadUsernameOrPassword
		}
		if clientID != name {
			return nil, &Rejection{Reason: ReasonBadClientID,
				Detail: fmt.Sprintf("device client id %q must equal its id", clientID)}, packets.ErrClientIdentifierNotValid
		}
		if rej := admit(ctx, devices, name); rej != nil {
			return nil, rej, packets.ErrNotAuthorized // 3.1.1: see OnConnect
		}
		return &identity{device: true, name: name}, nil, packets.CodeSuccess
	case !errors.Is(err, ErrUnknownDevice):
		return nil, &Rejection{Reason: ReasonAuthError, Detail: err.Error()}, packets.ErrServerUnavailable
	}

	// Not a device: an operator, or nobody.
	if operators == nil {
		return nil, &Rejection{Reason: ReasonUnknownDevice, Detail: "not a provisioned device"}, packets.ErrBadUsernameOrPassword
	}
	role, err := operators.AuthenticateOperator(ctx, name, password)
	if err != nil {
		reason := ReasonBadPassword
		if errors.Is(err, ErrUnknownOperator) {
			reason = ReasonUnknownDevice
		}
		// A wrong password for a known operator is an operator's event; an
		// unknown name belongs to nobody.
		return nil, &Rejection{Reason: reason, Operator: reason == ReasonBadPassword, throttleName: reason == ReasonBadPassword, Detail: "operator: " + err.Error()}, packets.ErrBadUsernameOrPassword
	}
	if !role.Valid() {
		return nil, &Rejection{Reason: ReasonAuthError, Operator: true, Detail: fmt.Sprintf("operator role %q", role)}, packets.ErrBadUsernameOrPassword
	}
	// An operator must not take over the broker's, the backend's, another
	// operator's or a device's session by using its client ID.
	if detail := operatorClientID(name, clientID); detail != "" {
		return nil, &Rejection{Reason: ReasonBadClientID, Operator: true, Detail: detail}, packets.ErrClientIdentifierNotValid
	}
	if clientID == "" {
		return &identity{name: name, role: role}, nil, packets.CodeSuccess
	}
	switch _, err := devices.DeviceKeys(ctx, clientID); {
	case err == nil:
		return nil, &Rejection{Reason: ReasonBadClientID, Operator: true,
			Detail: fmt.Sprintf("client id %q belongs to a device", clientID)}, packets.ErrClientIdentifierNotValid
	case !errors.Is(err, ErrUnknownDevice):
		return nil, &Rejection{Reason: ReasonAuthError, Operator: true, Detail: err.Error()}, packets.ErrServerUnavailable
	}
	return &identity{name: name, role: role}, nil, packets.CodeSuccess
}

// OnACLCheck checks publishes (write) and subscriptions and deliveries
// (read). Before a delivery it also applies backpressure (see flow.go).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.s
	if cl.Net.Inline {
		return true
	}
	id := s.identityOf(cl)
	if write {
		if id != nil && allowPublish(id, topic) {
			return true
		}
		s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Operator: s.isOperator(cl),
			Reason: ReasonACLPublish, Detail: "publish to " + topic})
		return false
	}
	if id == nil {
		// A disconnected persistent session: its subscriptions were checked
		// when they were made, so let mochi queue the message for it.
		return cl.Closed()
	}
	if !allowRead(id, topic) {
		return false
	}
	s.admit(cl, id)
	return true
}

// OnSubscribe refuses filters beyond the client's subscription limits (see
// limits.go) and reports filters the ACL refuses; OnACLCheck then refuses
// both.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.s
	if cl.Net.Inline {
		return pk
	}
	id := s.identityOf(cl)
	if id != nil {
		s.limitSubscriptions(cl, id, &pk)
	}
	for _, sub := range pk.Filters {
		if sub.Filter == refusedQuota || sub.Filter == refusedLength {
			continue // reported by limitSubscriptions
		}
		if id == nil || !allowRead(id, sub.Filter) {
			s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Operator: s.isOperator(cl),
				Reason: ReasonACLSubscribe, Detail: "subscribe to " + sub.Filter})
		}
	}
	return pk
}

// OnPacketRead refuses retained publishes, closing the connection: a
// retained command or status would be replayed to every later subscriber.
// It also reports publishes to $SYS or invalid topics, which mochi ignores
// before any ACL check.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline {
		return pk, nil
	}
	rej := Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Operator: h.s.isOperator(cl)}
	if pk.FixedHeader.Retain {
		rej.Reason, rej.Detail = ReasonACLRetain, "retained publish to "+pk.TopicName
		h.s.reject(rej)
		return pk, packets.ErrRejectPacket // mochi closes the connection
	}
	if pk.TopicName != "" && !mqtt.IsValidFilter(pk.TopicName, true) {
		rej.Reason, rej.Detail = ReasonACLPublish, "publish to "+pk.TopicName
		h.s.reject(rej)
	}
	return pk, nil
}

// OnDisconnect reports oversized packets from connected clients, and the
// end of every device connection to Config.Presence.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Operator: h.s.isOperator(cl),
			Reason: ReasonPacketTooLarge, Detail: fmt.Sprintf("packet above %d bytes", h.s.cfg.MaxPacketSize)})
	}
	h.s.ended(cl.Net.Conn, disconnectCause(cl.StopCause(), err))
}

// OnPublishDropped delivers what mochi would drop (see flow.go).
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.s.redeliver(cl, pk)
}

// reportingListener wraps a mochi listener to see how each connection ends:
// it forgets the connection's identity and reports an oversized CONNECT,
// which happens before any hook runs.
type reportingListener struct {
	listeners.Listener
	s *Server
}

func (l *reportingListener) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error {
		err := establish(id, c)
		l.s.ended(c, CauseClosed) // when OnDisconnect did not run
		l.s.forget(c)
		// mochi wraps read errors of the CONNECT packet ("read connection:
		// %w"); later ones, reported by OnDisconnect, come bare.
		if errors.Is(err, packets.ErrPacketTooLarge) && errors.Unwrap(err) != nil {
			l.s.reject(Rejection{Reason: ReasonPacketTooLarge, Detail: "oversized CONNECT from " + c.RemoteAddr().String()})
		}
		if err != nil {
			l.s.log.Debug().Err(err).Str("listener", id).Str("remote", c.RemoteAddr().String()).Msg("connection ended")
		}
		return nil
	})
}
