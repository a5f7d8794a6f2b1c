package broker

import (
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// SubscriptionLimits bound what one client may subscribe to: a session's
// subscriptions live in memory as long as it does (up to MaxSessionExpiry).
type SubscriptionLimits struct {
	Max       int // distinct filters per session
	MaxFilter int // bytes per filter
}

// Defaults: a device needs only its down/# (or a few down/{kind}); an
// operator a handful of events/ filters.
var (
	DefaultDeviceSubscriptions   = SubscriptionLimits{Max: 8, MaxFilter: 256}
	DefaultOperatorSubscriptions = SubscriptionLimits{Max: 64, MaxFilter: 1024}
)

// Refused filters are rewritten to these markers in OnSubscribe: a valid
// filter no account may read, so mochi refuses it without subscribing, and
// OnSubscribed then sets the precise MQTT 5 reason code.
const (
	refusedQuota  = "$ecowatt/refused/quota"
	refusedLength = "$ecowatt/refused/length"
)

// limitSubscriptions rewrites the filters of pk that would take the client
// past its limits into refused markers, reporting each; the rest are left
// to the ACL. It runs in the client's read loop, so the subscription count
// cannot change under it.
func (s *Server) limitSubscriptions(cl *mqtt.Client, id *identity, pk *packets.Packet) {
	lim := s.cfg.OperatorSubscriptions
	if id.device {
		lim = s.cfg.DeviceSubscriptions
	}
	have := cl.State.Subscriptions.GetAll()
	n := len(have)
	added := map[string]bool{}
	filters := make([]packets.Subscription, len(pk.Filters)) // mochi may share the decoded slice
	copy(filters, pk.Filters)
	for i, sub := range filters {
		rej := Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID}
		_, exists := have[sub.Filter]
		switch {
		case len(sub.Filter) > lim.MaxFilter:
			rej.Reason, rej.Detail = ReasonFilterTooLong, fmt.Sprintf("filter of %d bytes, limit %d", len(sub.Filter), lim.MaxFilter)
			filters[i].Filter = refusedLength
		case exists || added[sub.Filter]:
			continue
		case n >= lim.Max:
			rej.Reason, rej.Detail = ReasonSubscriptions, fmt.Sprintf("subscribe to %s: %d subscriptions, limit %d", sub.Filter, n, lim.Max)
			filters[i].Filter = refusedQuota
		default:
			if allowRead(id, sub.Filter) { // a refused filter takes no slot
				n++
				added[sub.Filter] = true
			}
			continue
		}
		s.reject(rej)
	}
	pk.Filters = filters
}

// OnSubscribed gives MQTT 5 clients the precise reason for a filter
// refused by its limits (3.1.1 has only 0x80). mochi writes the SUBACK
// from reasonCodes after this hook.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if cl.Properties.ProtocolVersion < 5 {
		return
	}
	for i, sub := range pk.Filters {
		if i >= len(reasonCodes) {
			return
		}
		switch sub.Filter {
		case refusedQuota:
			reasonCodes[i] = packets.ErrQuotaExceeded.Code
		case refusedLength:
			reasonCodes[i] = packets.ErrTopicFilterInvalid.Code
		}
	}
}

// OnSessionEstablish reports a session takeover: an authenticated client
// whose ID is held by a live connection, which mochi is about to close. For
// a device it means its key is used twice, or that its previous connection
// died without the broker noticing.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	old, ok := h.s.mochi.Clients.Get(cl.ID)
	if !ok || old.Closed() || old.Net.Inline || cl.Net.Inline {
		return
	}
	h.s.reject(Rejection{Username: string(cl.Properties.Username), ClientID: cl.ID, Reason: ReasonSessionTakeover,
		Detail: fmt.Sprintf("connection from %s replaced the live one from %s", cl.Net.Remote, old.Net.Remote)})
}
