package topics

// Role is an operator account's role. It decides what the broker's ACL
// lets the account do (docs/PROTOCOL.md §1) and what the backend accepts
// on its ops topics; both use these values, and the backend stores them.
type Role string

// Operator roles.
const (
	RoleAdmin  Role = "admin"  // may publish ops commands/config, run rollouts and read events
	RoleViewer Role = "viewer" // may only read events
)

// Valid reports whether r is one of the roles above.
func (r Role) Valid() bool { return r == RoleAdmin || r == RoleViewer }

// Message is one MQTT message as the broker hands it to an in-process
// subscriber (the embedded broker and the external-broker client alike),
// so that either is the backend's Bus without an adapter. Username is the
// publishing client's account; empty for in-process publishes or when the
// broker does not say.
type Message struct {
	Topic    string
	Payload  []byte
	Username string
}
