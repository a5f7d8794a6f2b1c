package topics

// Role is an operator's role. It is the same on every surface: the broker
// (who may publish on ops/ topics), the backend (who may send ops
// messages) and the HTTP API (each route's minimum role).
type Role string

// Operator roles, from least to most privileged.
const (
	// RoleViewer reads everything and changes nothing.
	RoleViewer Role = "viewer"
	// RoleOperator also changes config, sends commands and starts
	// device updates and rollouts (over HTTP and on ops/ topics).
	RoleOperator Role = "operator"
	// RoleAdmin also provisions devices, uploads firmware and manages
	// operator accounts and device lifecycle.
	RoleAdmin Role = "admin"
)

// Roles lists the roles from least to most privileged.
var Roles = []Role{RoleViewer, RoleOperator, RoleAdmin}

func (r Role) rank() int {
	for i, x := range Roles {
		if x == r {
			return i + 1
		}
	}
	return 0
}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool { return r.rank() > 0 }

// AtLeast reports whether r is valid and grants everything min does.
func (r Role) AtLeast(min Role) bool { return r.Valid() && r.rank() >= min.rank() }
