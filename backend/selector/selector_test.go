package selector

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// goodSelectors maps input to canonical String(); it seeds the fuzz target.
var goodSelectors = []struct{ in, canon string }{
	{"", ""},
	{"   ", ""},
	{"site=colombo", "site=colombo"},
	{" site = colombo , model != SG5K ", "site=colombo,model!=SG5K"},
	{"model in (SG5K,SG6K)", "model in (SG5K,SG6K)"},
	{"model in(SG5K, SG6K )", "model in (SG5K,SG6K)"},
	{"model notin (SG5K)", "model notin (SG5K)"},
	{"beta", "beta"},
	{"!beta", "!beta"},
	{"! beta,site", "!beta,site"},
	{"site=New York", "site=New York"},
	{"site=", "site="},
	{"in in (x),notin", "in in (x),notin"},
	{"online=true", "online=true"},
	{"online!=false", "online!=false"},
	{"firmware=1.0.4", "firmware=1.0.4"},
	{"firmware<1.1.0", "firmware<1.1.0"},
	{"firmware>=1.1.0-rc.1", "firmware>=1.1.0-rc.1"},
	{"firmware in (1.0.4,v1.0.5)", "firmware in (1.0.4,v1.0.5)"},
	{"config_drift=true", "config_drift=true"},
	{"config_version<7", "config_version<7"},
	{"config_version>=0", "config_version>=0"},
	{"last_seen<1h", "last_seen<1h"},
	{"last_seen>7d", "last_seen>7d"},
	{"last_seen<=1h30m", "last_seen<=1h30m"},
	{"id~inv-00", "id~inv-00"},
	{"id in (a,b)", "id in (a,b)"},
	{"site=colombo,model=SG5K,online=true,firmware<1.1.0", "site=colombo,model=SG5K,online=true,firmware<1.1.0"},
	{"rack.row-2_a=x<y~z", "rack.row-2_a=x<y~z"},
}

func TestParseGood(t *testing.T) {
	for _, tc := range goodSelectors {
		t.Run(tc.in, func(t *testing.T) {
			s, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got := s.String(); got != tc.canon {
				t.Fatalf("String() = %q, want %q", got, tc.canon)
			}
			again, err := Parse(s.String())
			if err != nil || !reflect.DeepEqual(again, s) {
				t.Fatalf("round trip: %+v %v, want %+v", again, err, s)
			}
		})
	}
}

// TestParseErrors: each grammar error names its byte offset and reason.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		pos      int
		reason   string
	}{
		{"leading comma", ",site", 0, "empty term"},
		{"trailing comma", "site=a,", 7, "empty term"},
		{"double comma", "a,,b", 2, "empty term"},
		{"upper-case key", "Site=a", 0, "character 'S' not allowed in a label key"},
		{"key ends with dash", "site-=a", 4, "must start and end with"},
		{"key too long", strings.Repeat("k", 64) + "=a", 0, "1-63 characters"},
		{"no operator", "site colombo", 5, "expected an operator"},
		{"in without space", "model in", 8, "expected '(' after in"},
		{"missing paren", "model in SG5K", 9, "expected '(' after in"},
		{"unclosed list", "model in (SG5K,SG6K", 19, "missing ')'"},
		{"empty list value", "model in (SG5K,,SG6K)", 15, "empty value in the list"},
		{"empty list", "model in ()", 10, "empty value in the list"},
		{"junk after list", "model in (a) x", 13, "expected ',' or the end"},
		{"forbidden value char", "site=a=b", 6, "character '=' not allowed in a value"},
		{"paren in value", "site=a)", 6, "character ')' not allowed in a value"},
		{"bang in value", "site=a!", 6, "character '!' not allowed in a value"},
		{"non-printable value", "site=a\tb", 6, "not printable ASCII"},
		{"value too long", "site=" + strings.Repeat("v", 64), 68, "at most 63 characters"},
		{"order on a label", "site<a", 4, "operator < does not apply to a label"},
		{"prefix on a label", "site~a", 4, "operator ~ does not apply to a label"},
		{"not-exists with value", "!beta=1", 5, "takes no operator or value"},
		{"not-exists of a field", "!online", 1, "built-in field needs an operator"},
		{"bare field", "online", 6, "built-in field needs an operator"},
		{"bad bool", "online=yes", 7, "takes true or false"},
		{"bool as number", "online=1", 7, "takes true or false"},
		{"order on online", "online<true", 6, "operator < does not apply to built-in field online"},
		{"bad version", "firmware<1.x", 9, "not a firmware version"},
		{"version leading zero", "firmware=01.0", 9, "not a firmware version"},
		{"empty version", "firmware=", 9, "firmware needs a value"},
		{"bad config version", "config_version<-1", 15, "non-negative integer"},
		{"config version not a number", "config_version=seven", 15, "non-negative integer"},
		{"equality on last_seen", "last_seen=1h", 9, "operator = does not apply to built-in field last_seen"},
		{"bad age", "last_seen<soon", 10, "positive age"},
		{"negative age", "last_seen<-1h", 10, "positive age"},
		{"zero days", "last_seen<0d", 10, "positive age"},
		{"bad id prefix", "id~inv 00", 3, "not a device ID"},
		{"only bang", "!", 1, "expected a key, found the end"},
		{"stray paren", "(a)", 0, "expected a key, found '('"},
		{"too long", strings.Repeat("a", MaxLen+1), MaxLen, "longer than"},
		{"too many terms", strings.Repeat("a,", MaxTerms) + "a", 2 * MaxTerms, "more than 32 terms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse(tc.in)
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q) = %+v, %v; want a *selector.Error", tc.in, s, err)
			}
			if se.Pos != tc.pos || !strings.Contains(se.Reason, tc.reason) {
				t.Fatalf("Parse(%q) error at %d %q; want at %d containing %q", tc.in, se.Pos, se.Reason, tc.pos, tc.reason)
			}
			if !strings.Contains(err.Error(), "at byte") {
				t.Fatalf("message %q does not name the byte", err)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	now := time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	dev := View{
		ID:            "inv-0042",
		Labels:        map[string]string{"site": "colombo", "model": "SG5K", "beta": ""},
		Online:        true,
		Firmware:      "1.0.10",
		ConfigVersion: 6,
		ConfigDrift:   true,
		LastSeen:      now.Add(-30 * time.Minute),
	}
	never := View{ID: "new-1"}
	for _, tc := range []struct {
		sel       string
		dev, news bool
	}{
		{"", true, true},
		{"site=colombo", true, false},
		{"site!=colombo", false, true},
		{"site=galle", false, false},
		{"model in (SG5K,SG6K)", true, false},
		{"model notin (SG5K,SG6K)", false, true},
		{"beta", true, false},
		{"!beta", false, true},
		{"beta=", true, false},
		{"online=true", true, false},
		{"online=false", false, true},
		{"online!=true", false, true},
		{"firmware=1.0.10", true, false},
		{"firmware=v1.0.10+build5", true, false},
		{"firmware!=1.0.10", false, true},
		{"firmware<1.1.0", true, false}, // 1.0.10 < 1.1.0 in semver, not as strings
		{"firmware>1.0.9", true, false},
		{"firmware<1.0.9", false, false},
		{"firmware>=1.0.10", true, false},
		{"firmware<=1.0.10-rc.1", false, false},
		{"firmware in (1.0.4,1.0.10)", true, false},
		{"firmware notin (1.0.10)", false, true},
		{"config_drift=true", true, false},
		{"config_drift=false", false, true},
		{"config_version<7", true, true},
		{"config_version>6", false, false},
		{"config_version=6", true, false},
		{"last_seen<1h", true, false},
		{"last_seen>1h", false, true}, // never seen is infinitely old
		{"last_seen<=30m", true, false},
		{"last_seen<30m", false, false},
		{"id~inv-00", true, false},
		{"id~inv-", true, false},
		{"id=new-1", false, true},
		{"id in (new-1,inv-0042)", true, true},
		{"id notin (new-1)", true, false},
		{"site=colombo,model=SG5K,online=true,firmware<1.1.0", true, false},
		{"site=colombo,model=SG6K", false, false},
	} {
		t.Run(tc.sel, func(t *testing.T) {
			s, err := Parse(tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Match(dev, now); got != tc.dev {
				t.Errorf("Match(dev) = %v, want %v", got, tc.dev)
			}
			if got := s.Match(never, now); got != tc.news {
				t.Errorf("Match(never seen) = %v, want %v", got, tc.news)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, tc := range goodSelectors {
		f.Add(tc.in)
	}
	for _, s := range []string{"model in (a,", "!", "a!=b,c notin(d ,e)", "id~", "last_seen<1.5h", "x=\x00"} {
		f.Add(s)
	}
	now := time.Unix(1e9, 0)
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			var se *Error
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(in) {
				t.Fatalf("Parse(%q): %v is not a *Error inside the input", in, err)
			}
			return
		}
		again, err := Parse(s.String())
		if err != nil {
			t.Fatalf("Parse(%q).String() = %q does not parse: %v", in, s.String(), err)
		}
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip of %q: %+v != %+v", in, again, s)
		}
		s.Match(View{ID: "a", Labels: map[string]string{"a": "b"}, Firmware: "1.0"}, now)
	})
}
