package broker

import (
	"strings"
	"testing"

	"github.com/ecowatt/ecowatt/topics"
)

var aclSeeds = []string{
	"#", "+", "+/#", "$SYS/#", "$share/g/#", "ecowatt/v1/#",
	topics.DeviceDownFilter("d1"), topics.DeviceDownFilter("d2"), topics.DeviceDown("d1", topics.KindConfig),
	topics.DeviceDownPrefix("d1") + "+", topics.DeviceDownPrefix("d1") + "a/b", topics.DeviceDownPrefix("d1") + "+/#",
	topics.DeviceUp("d1", topics.KindBirth), topics.DeviceUp("d2", topics.KindBirth), topics.DeviceUpPrefix("d1") + "#",
	topics.Ops("d1", topics.KindCommand), topics.Ops("d1", "x"), topics.FilterAllOps,
	topics.Event("d1", topics.EventSecurity), topics.FilterAllEvents, "$share/g/" + topics.FilterAllEvents,
	"ecowatt/v1/events/$x", "ecowatt/v1/events", "ecowatt/v1/dev/d1/down", "ecowatt/v1/dev/d1/down/",
}

// FuzzACL checks the ACL's invariants on arbitrary topics and filters.
func FuzzACL(f *testing.F) {
	for _, s := range aclSeeds {
		f.Add(s)
	}
	dev := &identity{device: true, name: "d1"}
	admin := &identity{name: "d1", role: topics.RoleAdmin} // an operator named like a device gains nothing
	viewer := &identity{name: "v", role: topics.RoleViewer}
	f.Fuzz(func(t *testing.T, s string) {
		if allowPublish(dev, s) {
			p, err := topics.Parse(s)
			if err != nil || p.Class != topics.ClassDevice || p.Dir != topics.Up || p.Device != "d1" {
				t.Fatalf("device may publish to %q", s)
			}
		}
		if allowRead(dev, s) {
			rest, ok := strings.CutPrefix(s, topics.DeviceDownPrefix("d1"))
			if !ok || strings.Contains(rest, "/") || (strings.ContainsAny(rest, "#+") && len(rest) != 1) {
				t.Fatalf("device may read %q", s)
			}
		}
		if allowPublish(admin, s) {
			if p, err := topics.Parse(s); err != nil || p.Class != topics.ClassOps {
				t.Fatalf("admin may publish to %q", s)
			}
		}
		if allowPublish(viewer, s) {
			t.Fatalf("viewer may publish to %q", s)
		}
		for _, op := range []*identity{admin, viewer} {
			if allowRead(op, s) {
				f, _ := stripShare(s)
				if !strings.HasPrefix(f, topics.Root+"/events/") {
					t.Fatalf("%s may read %q", op.role, s)
				}
			}
		}
		if allowWill(dev, s, false) && s != topics.DeviceUp("d1", topics.KindBirth) {
			t.Fatalf("device will on %q", s)
		}
		if allowWill(dev, s, true) || allowWill(admin, s, true) {
			t.Fatalf("retained will on %q", s)
		}
		if allowRead(&identity{name: "x", role: "root"}, s) || allowPublish(&identity{name: "x"}, s) {
			t.Fatalf("unknown role allowed %q", s)
		}
	})
}
