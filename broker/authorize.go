package broker

import (
	"context"
	"time"

	"github.com/ecowatt/ecowatt/topics"
)

// This file exports the embedded broker's connect and ACL rules so that an
// external broker (EMQX, Mosquitto with mosquitto-go-auth) can enforce the
// very same rules through HTTP callbacks (see broker/authhttp).

// Account is an authenticated broker account.
type Account struct {
	Device bool        // a provisioned device; otherwise an operator
	Name   string      // device ID or operator name
	Role   topics.Role // operators only
}

func (a Account) identity() *identity {
	return &identity{device: a.Device, name: a.Name, role: a.Role}
}

// CheckPublish reports whether a may publish to topic (a device only under
// its own up/, an admin only to ops/, a viewer nowhere).
func CheckPublish(a Account, topic string) bool { return allowPublish(a.identity(), topic) }

// CheckSubscribe reports whether a may subscribe to filter, or receive a
// message on a concrete topic (a device only under its own down/, an
// operator only under events/).
func CheckSubscribe(a Account, filter string) bool { return allowRead(a.identity(), filter) }

// Authenticator applies the embedded broker's connect rules outside mochi:
// a device logs in with its ID and a password token valid ±5 minutes and
// must use its ID as client ID; an operator logs in with name and password
// and uses its name, or its name followed by "-" and anything, as client ID,
// never "inline", "ecowatt-..." (backend replicas) or a device's ID.
type Authenticator struct {
	Devices   DeviceAuth
	Operators OperatorAuth     // may be nil: no operator accounts
	Now       func() time.Time // default time.Now
}

// Authenticate checks a CONNECT's username, password and client ID. It
// returns the account, or the rejection the embedded broker would report.
func (a Authenticator) Authenticate(ctx context.Context, username, password, clientID string) (Account, *Rejection) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	id, rej, _ := authenticate(ctx, a.Devices, a.Operators, now(), username, password, clientID)
	if rej != nil {
		rej.Username, rej.ClientID = username, clientID
		return Account{}, rej
	}
	return Account{Device: id.device, Name: id.name, Role: id.role}, nil
}
