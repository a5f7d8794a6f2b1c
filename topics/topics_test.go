package topics

import (
	"errors"
	"strings"
	"testing"
)

var parseCases = []struct {
	name  string
	topic string
	want  Topic
	err   bool
}{
	{"device up", "ecowatt/v1/dev/inv-01/up/birth", Topic{Class: ClassDevice, Device: "inv-01", Dir: Up, Kind: KindBirth}, false},
	{"device up telemetry", "ecowatt/v1/dev/A_b/up/telemetry", Topic{Class: ClassDevice, Device: "A_b", Dir: Up, Kind: KindTelemetry}, false},
	{"device down", "ecowatt/v1/dev/x/down/fota_chunk", Topic{Class: ClassDevice, Device: "x", Dir: Down, Kind: KindFOTAChunk}, false},
	{"ops", "ecowatt/v1/ops/x/command", Topic{Class: ClassOps, Device: "x", Kind: KindCommand}, false},
	{"events", "ecowatt/v1/events/x/security", Topic{Class: ClassEvents, Device: "x", Kind: EventSecurity}, false},
	{"operator event", "ecowatt/v1/events/operators/alice/security", Topic{Class: ClassEvents, Kind: EventSecurity, Operator: "alice"}, false},
	{"device called operators", "ecowatt/v1/events/operators/security", Topic{Class: ClassEvents, Device: "operators", Kind: EventSecurity}, false},
	{"operator event other kind", "ecowatt/v1/events/operators/alice/config", Topic{}, true},
	{"operator event bad name", "ecowatt/v1/events/operators/a+b/security", Topic{}, true},
	{"events too deep", "ecowatt/v1/events/x/y/security", Topic{}, true},
	{"wrong root", "ecowatt/v2/dev/x/up/birth", Topic{}, true},
	{"empty", "", Topic{}, true},
	{"up kind on down", "ecowatt/v1/dev/x/down/birth", Topic{}, true},
	{"down kind on up", "ecowatt/v1/dev/x/up/config", Topic{}, true},
	{"bad dir", "ecowatt/v1/dev/x/sideways/birth", Topic{}, true},
	{"wildcard id", "ecowatt/v1/dev/+/up/birth", Topic{}, true},
	{"hash id", "ecowatt/v1/dev/#/up/birth", Topic{}, true},
	{"empty id", "ecowatt/v1/dev//up/birth", Topic{}, true},
	{"too deep", "ecowatt/v1/dev/x/up/birth/extra", Topic{}, true},
	{"too shallow", "ecowatt/v1/dev/x/up", Topic{}, true},
	{"ops unknown kind", "ecowatt/v1/ops/x/reboot", Topic{}, true},
	{"trailing slash", "ecowatt/v1/ops/x/command/", Topic{}, true},
	{"long id", "ecowatt/v1/ops/" + strings.Repeat("a", 65) + "/command", Topic{}, true},
}

func TestParse(t *testing.T) {
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.topic)
			if tc.err {
				if err == nil || !errors.Is(err, ErrBadTopic) {
					t.Fatalf("Parse(%q) = %+v, %v; want ErrBadTopic", tc.topic, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.topic, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tc.topic, got, tc.want)
			}
			if got.String() != tc.topic {
				t.Fatalf("round trip: %q != %q", got.String(), tc.topic)
			}
		})
	}
}

func TestBuilders(t *testing.T) {
	cases := map[string]string{
		DeviceUp("d1", KindTelemetry):         "ecowatt/v1/dev/d1/up/telemetry",
		DeviceDown("d1", KindConfig):          "ecowatt/v1/dev/d1/down/config",
		Ops("d1", KindCommand):                "ecowatt/v1/ops/d1/command",
		Event("d1", EventFOTA):                "ecowatt/v1/events/d1/fota",
		OperatorEvent("alice", EventSecurity): "ecowatt/v1/events/operators/alice/security",
		DeviceDownFilter("d1"):                "ecowatt/v1/dev/d1/down/#",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestValidateID(t *testing.T) {
	good := []string{"a", "A-z_09", strings.Repeat("x", 64)}
	bad := []string{"", strings.Repeat("x", 65), "a/b", "a+b", "a#", "é", "a b", "a.b", "$SYS"}
	for _, id := range good {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range bad {
		if err := ValidateID(id); !errors.Is(err, ErrBadID) {
			t.Errorf("ValidateID(%q) = %v, want ErrBadID", id, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.topic)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := Parse(s)
		if err != nil {
			return
		}
		if tp.String() != s {
			t.Fatalf("accepted %q but rebuilt %q", s, tp.String())
		}
		if (tp.Operator == "") == (tp.Device == "") {
			t.Fatalf("%q: want exactly one of device %q and operator %q", s, tp.Device, tp.Operator)
		}
		if ValidateID(tp.Device+tp.Operator) != nil {
			t.Fatalf("accepted bad id in %q", s)
		}
		if strings.ContainsAny(s, "+#") {
			t.Fatalf("accepted wildcard topic %q", s)
		}
	})
}
