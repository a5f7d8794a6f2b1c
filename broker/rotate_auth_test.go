package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ecowatt/ecowatt/topics/envelope"
)

// rotatingAuth is a fakeAuth whose devices may have a pending key.
type rotatingAuth struct {
	*fakeAuth
	pending map[string]*envelope.Keys
}

var _ RotatingDeviceAuth = rotatingAuth{}

func (a rotatingAuth) VerifyDevicePassword(_ context.Context, id, password string, now time.Time) error {
	err := envelope.VerifyPassword(a.devices[id], id, password, now)
	if k := a.pending[id]; k != nil && errors.Is(err, envelope.ErrPasswordMAC) {
		return envelope.VerifyPassword(k, id, password, now)
	}
	return err
}

// TestAuthenticatePendingKey: during a key rotation (PROTOCOL.md 15.4) the
// pending key's password is accepted as well as the current one; a key
// that is neither is still refused, and without RotatingDeviceAuth only
// the current key works.
func TestAuthenticatePendingKey(t *testing.T) {
	const id = "dev-rot"
	fa := newFakeAuth(t, id)
	next, _ := envelope.DeriveKeys(make([]byte, 32))
	other, _ := envelope.DeriveKeys(append(make([]byte, 31), 1))
	ra := rotatingAuth{fakeAuth: fa, pending: map[string]*envelope.Keys{id: &next}}
	now := time.Now()
	for _, tc := range []struct {
		name string
		auth DeviceAuth
		keys *envelope.Keys
		want packets.Code
	}{
		{"current key", ra, fa.devices[id], packets.CodeSuccess},
		{"pending key", ra, &next, packets.CodeSuccess},
		{"another key", ra, &other, packets.ErrBadUsernameOrPassword},
		{"pending key, no rotation support", fa, &next, packets.ErrBadUsernameOrPassword},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, rej, code := authenticate(context.Background(), tc.auth, fa, now, id, envelope.Password(tc.keys, id, now), id)
			if code != tc.want {
				t.Errorf("code %v (%+v), want %v", code, rej, tc.want)
			}
		})
	}
}
