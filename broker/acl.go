package broker

import (
	"strings"

	"github.com/ecowatt/ecowatt/topics"
)

// Rejection reasons, the values of Rejection.Reason and of the reason label
// of ecowatt_broker_rejections_total.
const (
	ReasonUnknownDevice   = "unknown_device"         // neither a provisioned device nor an operator
	ReasonBadPassword     = "bad_password"           // wrong or malformed password (token)
	ReasonExpiredPassword = "expired_password"       // device token outside its ±5 minute window
	ReasonBadClientID     = "bad_client_id"          // device client ID != its ID, or an operator using a device's ID
	ReasonAuthError       = "auth_error"             // the device or operator store failed
	ReasonACLPublish      = "acl_publish"            // publish outside the account's topics
	ReasonACLSubscribe    = "acl_subscribe"          // subscription outside the account's topics
	ReasonACLWill         = "acl_will"               // will message to a forbidden topic, or retained
	ReasonACLRetain       = "acl_retain"             // a client published with the retain flag
	ReasonPacketTooLarge  = "packet_too_large"       // packet above Config.MaxPacketSize
	ReasonSlowConsumer    = "slow_consumer"          // a subscriber stopped reading; disconnected
	ReasonThrottled       = "throttled"              // a login refused unchecked: too many failures from its address or for its operator name
	ReasonSubscriptions   = "too_many_subscriptions" // a subscription beyond the account's limit
	ReasonFilterTooLong   = "filter_too_long"        // a subscription filter above the account's limit
	ReasonSessionTakeover = "session_takeover"       // a second authenticated connection replaced a live one
	ReasonDisabled        = "disabled"               // a device with a valid token that an operator disabled
	ReasonDecommissioned  = "decommissioned"         // a device with a valid token that was decommissioned (a replica's key cache still held its key)
)

// Reasons returns every Reason* value, for metrics and the docs test.
func Reasons() []string {
	return []string{
		ReasonUnknownDevice, ReasonBadPassword, ReasonExpiredPassword, ReasonBadClientID,
		ReasonAuthError, ReasonACLPublish, ReasonACLSubscribe, ReasonACLWill, ReasonACLRetain,
		ReasonPacketTooLarge, ReasonSlowConsumer, ReasonThrottled, ReasonSubscriptions,
		ReasonFilterTooLong, ReasonSessionTakeover, ReasonDisabled, ReasonDecommissioned,
	}
}

// identity is who an authenticated connection belongs to.
type identity struct {
	device bool        // a provisioned device; otherwise an operator
	name   string      // device ID or operator name
	role   topics.Role // operators only

	gen   uint64 // devices: the connection's generation from Config.Presence; 0 without
	ended bool   // the end was reported to Config.Presence; guarded by Server.mu
}

// allowPublish reports whether id may publish to topic. Every client, device
// or operator, publishes only to concrete, valid EcoWatt topics:
//
//   - a device to ecowatt/v1/dev/{its id}/up/{kind};
//   - an operator or admin to ecowatt/v1/ops/{id}/{config|command};
//   - a viewer to nothing.
func allowPublish(id *identity, topic string) bool {
	t, err := topics.Parse(topic)
	if err != nil {
		return false
	}
	if id.device {
		return t.Class == topics.ClassDevice && t.Dir == topics.Up && t.Device == id.name
	}
	return id.role.AtLeast(topics.RoleOperator) && t.Class == topics.ClassOps
}

// allowRead reports whether id may subscribe to filter, or receive a message
// on the concrete topic filter. A device reads only its own down/ subtree
// (its down/#, down/+ or one down/{kind}); an operator reads only
// ecowatt/v1/events/..., optionally through a shared subscription.
// Malformed wildcards are refused by mochi before this is called.
func allowRead(id *identity, filter string) bool {
	if id.device {
		rest, ok := strings.CutPrefix(filter, topics.DeviceDownPrefix(id.name))
		return ok && oneLevel(rest)
	}
	if !id.role.Valid() {
		return false
	}
	if f, ok := stripShare(filter); ok {
		filter = f
	}
	rest, ok := strings.CutPrefix(filter, topics.Root+"/"+topics.ClassEvents+"/")
	return ok && rest != "" && !strings.HasPrefix(rest, "$")
}

// oneLevel reports whether s is a single topic level: "#", "+" or a name
// without wildcards.
func oneLevel(s string) bool {
	if s == "#" || s == "+" {
		return true
	}
	return s != "" && !strings.ContainsAny(s, "/#+$")
}

// stripShare removes a "$share/{group}/" prefix.
func stripShare(filter string) (string, bool) {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok {
		return filter, false
	}
	_, f, ok := strings.Cut(rest, "/")
	return f, ok
}

// allowWill reports whether id may leave a will on topic. A device's will
// must be exactly its birth topic (the backend reads it as "offline"); an
// operator's will obeys its publish rights. Retained wills are refused.
func allowWill(id *identity, topic string, retain bool) bool {
	if retain {
		return false
	}
	if id.device {
		return topic == topics.DeviceUp(id.name, topics.KindBirth)
	}
	return allowPublish(id, topic)
}
