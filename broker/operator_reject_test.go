package broker

import (
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/topics"
)

// TestRejectionOperator: rejections of a known operator account carry
// Operator, so its events leave the device namespace; those of devices and
// of unknown names do not.
func TestRejectionOperator(t *testing.T) {
	tb := startBroker(t, nil, "d1")
	last := func(t *testing.T, reason string) Rejection {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if r := tb.rejected(); len(r) > 0 && r[len(r)-1].Reason == reason {
				return r[len(r)-1]
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("no %s rejection; got %+v", reason, tb.rejected())
		return Rejection{}
	}
	cases := []struct {
		name, clientID, user, password, reason string
		operator                               bool
	}{
		{"operator wrong password", "viewer", "viewer", "nope", ReasonBadPassword, true},
		{"operator bad client id", "d1", "viewer", "viewer-pw", ReasonBadClientID, true},
		{"device wrong password", "d1", "d1", "v1.1.00", ReasonBadPassword, false},
		{"unknown name", "ghost", "ghost", "x", ReasonUnknownDevice, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := connect(t, tb.clientOpts(tc.clientID, tc.user, tc.password)); err == nil {
				t.Fatal("connected")
			}
			if r := last(t, tc.reason); r.Operator != tc.operator || r.Username != tc.user {
				t.Fatalf("rejection %+v, want operator=%t", r, tc.operator)
			}
		})
	}
	t.Run("connected operator publishing outside its rights", func(t *testing.T) {
		c := mustConnect(t, tb.clientOpts("viewer-1", "viewer", "viewer-pw"))
		c.Publish(topics.Ops("d1", topics.KindCommand), 1, false, []byte("{}"))
		if r := last(t, ReasonACLPublish); !r.Operator || r.Username != "viewer" {
			t.Fatalf("rejection %+v, want operator viewer", r)
		}
	})
}
