package backend

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/fota"
	"github.com/redis/go-redis/v9"
)

// Sort orders of a fleet page.
const (
	SortID       = "id"        // ascending ID
	SortLastSeen = "last_seen" // most recently seen first, never seen last
	SortFirmware = "firmware"  // ascending in FOTA's version order, unknown versions first
)

// Page size limits.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// FleetQuery asks for one page of the devices a selector matches.
type FleetQuery struct {
	Selector selector.Selector
	Sort     string // SortID when empty
	Limit    int    // DefaultPageLimit when 0
	Cursor   string // from the previous page's Next; "" for the first page
}

// FleetPage is one page of devices, the number of devices matching in all,
// and the cursor of the next page ("" on the last).
type FleetPage struct {
	Devices []Device `json:"devices"`
	Total   int      `json:"total"`
	Next    string   `json:"next_cursor,omitempty"`
}

// Config states of a device in the fleet summary.
const (
	ConfigDefault = "default" // no desired version was ever set
	ConfigInSync  = "in_sync"
	ConfigPending = "pending" // the desired version is not acknowledged yet
	ConfigDrift   = "drift"   // acknowledged, but a field was rejected
)

// FleetSummary counts the devices a selector matches.
type FleetSummary struct {
	Selector string         `json:"selector"`
	Total    int            `json:"total"`
	Online   map[string]int `json:"online"`   // "online", "offline"
	Firmware map[string]int `json:"firmware"` // version -> count; "unknown" before a birth
	Config   map[string]int `json:"config"`   // Config* states
	FOTA     map[string]int `json:"fota"`     // "none", "in_progress", or the last result
}

// row is a device as a query sees it.
type row struct {
	dev    Device
	config string // Config* state
}

func (r row) view() selector.View {
	v := selector.View{
		ID: r.dev.ID, Labels: r.dev.Labels, Online: r.dev.Online, Firmware: r.dev.FirmwareVersion,
		ConfigVersion: r.dev.ConfigVersion, ConfigDrift: r.config == ConfigPending || r.config == ConfigDrift,
	}
	if r.dev.LastSeen != nil {
		v.LastSeen = *r.dev.LastSeen
	}
	return v
}

// QueryDevices returns one page of the devices q.Selector matches, in
// q.Sort order. Label terms, id terms and online=true narrow the
// candidates through the Redis indexes; every candidate is then checked
// against its device hash with Selector.Match, so an index can only make
// a query slower, never wrong, as long as it is a superset (see
// RepairIndexes). A bad sort, limit or cursor is CodeInvalid.
func (s *Service) QueryDevices(ctx context.Context, q FleetQuery) (FleetPage, error) {
	if q.Sort == "" {
		q.Sort = SortID
	}
	less, ok := sorts[q.Sort]
	if !ok {
		return FleetPage{}, Errorf(CodeInvalid, "sort", "sort must be id, last_seen or firmware, not %q", q.Sort)
	}
	if q.Limit == 0 {
		q.Limit = DefaultPageLimit
	}
	if q.Limit < 1 || q.Limit > MaxPageLimit {
		return FleetPage{}, Errorf(CodeInvalid, "limit", "limit must be 1-%d", MaxPageLimit)
	}
	binding := q.Selector.String() + "\x00" + q.Sort
	var after *row
	if q.Cursor != "" {
		c, err := s.openCursor(ctx, q.Cursor, binding)
		if err != nil {
			return FleetPage{}, err
		}
		after = &c
	}
	rows, err := s.matching(ctx, q.Selector, false)
	if err != nil {
		return FleetPage{}, err
	}
	slices.SortFunc(rows, less)
	page := FleetPage{Devices: []Device{}, Total: len(rows)}
	start := 0
	if after != nil {
		start, _ = slices.BinarySearchFunc(rows, *after, func(r, c row) int {
			if less(c, r) < 0 {
				return 1
			}
			return -1 // rows equal to the cursor are before it
		})
	}
	end := min(start+q.Limit, len(rows))
	for _, r := range rows[start:end] {
		page.Devices = append(page.Devices, r.dev)
	}
	if end < len(rows) && end > start {
		if page.Next, err = s.sealCursor(ctx, rows[end-1], binding); err != nil {
			return FleetPage{}, err
		}
	}
	return page, nil
}

// Summary counts the devices sel matches by presence, firmware, config
// state and FOTA state.
func (s *Service) Summary(ctx context.Context, sel selector.Selector) (FleetSummary, error) {
	rows, err := s.matching(ctx, sel, true)
	if err != nil {
		return FleetSummary{}, err
	}
	sum := FleetSummary{Selector: sel.String(), Total: len(rows),
		Online: map[string]int{"online": 0, "offline": 0}, Firmware: map[string]int{},
		Config: map[string]int{ConfigDefault: 0, ConfigInSync: 0, ConfigPending: 0, ConfigDrift: 0},
		FOTA:   map[string]int{"none": 0, "in_progress": 0}}
	for _, r := range rows {
		if r.dev.Online {
			sum.Online["online"]++
		} else {
			sum.Online["offline"]++
		}
		fw := r.dev.FirmwareVersion
		if fw == "" {
			fw = "unknown"
		}
		sum.Firmware[fw]++
		sum.Config[r.config]++
		switch f := r.dev.FOTA; {
		case f == nil:
			sum.FOTA["none"]++
		case f.Active:
			sum.FOTA["in_progress"]++
		case f.Result != "":
			sum.FOTA[f.Result]++
		default:
			sum.FOTA["none"]++
		}
	}
	return sum, nil
}

// matching returns every device sel matches, in no particular order.
// The config hash is read only when withConfig or a term needs it.
func (s *Service) matching(ctx context.Context, sel selector.Selector, withConfig bool) ([]row, error) {
	for _, t := range sel.Terms {
		withConfig = withConfig || t.Key == selector.FieldConfigDrift
	}
	ids, err := s.candidates(ctx, sel)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var out []row
	const batch = 500
	for len(ids) > 0 {
		n := min(batch, len(ids))
		devs := make([]*redis.MapStringStringCmd, n)
		cfgs := make([]*redis.SliceCmd, n)
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids[:n] {
				devs[i] = p.HGetAll(ctx, s.keys.Device(id))
				if withConfig {
					cfgs[i] = p.HMGet(ctx, s.keys.Dev(id, "cfg"), "version", "pending", "desired", "reported")
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, Unavailable("query devices", err)
		}
		for i, id := range ids[:n] {
			h := devs[i].Val()
			if len(h) == 0 {
				continue // deleted, or a stale index entry
			}
			r := row{dev: s.parseDevice(id, h)}
			if withConfig {
				r.config = configState(cfgs[i].Val())
			}
			if sel.Match(r.view(), now) {
				out = append(out, r)
			}
		}
		ids = ids[n:]
	}
	return out, nil
}

// candidates narrows the fleet with the indexes: the intersection of what
// each indexable term allows, or every device when no term is indexable.
func (s *Service) candidates(ctx context.Context, sel selector.Selector) ([]string, error) {
	var cmds []*redis.StringSliceCmd
	var fixed [][]string
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, t := range sel.Terms {
			switch {
			case !t.Field && t.Op == selector.Eq:
				cmds = append(cmds, p.SMembers(ctx, s.keys.LabelIndex(t.Key, t.Values[0])))
			case !t.Field && t.Op == selector.In:
				keys := make([]string, len(t.Values))
				for i, v := range t.Values {
					keys[i] = s.keys.LabelIndex(t.Key, v)
				}
				cmds = append(cmds, p.SUnion(ctx, keys...))
			case !t.Field && t.Op == selector.Exists:
				cmds = append(cmds, p.SMembers(ctx, s.keys.LabelKeyIndex(t.Key)))
			case t.Key == selector.FieldID && t.Op == selector.Eq:
				fixed = append(fixed, t.Values)
			case t.Key == selector.FieldID && t.Op == selector.In:
				fixed = append(fixed, t.Values)
			case t.Key == selector.FieldID && t.Op == selector.Prefix:
				cmds = append(cmds, p.ZRangeByLex(ctx, s.keys.Devices(), &redis.ZRangeBy{Min: "[" + t.Values[0], Max: "(" + prefixEnd(t.Values[0])}))
			case t.Key == selector.FieldOnline && (t.Op == selector.Eq) == (t.Values[0] == "true"):
				cmds = append(cmds, p.ZRange(ctx, s.keys.Online(), 0, -1))
			}
		}
		if len(cmds) == 0 && len(fixed) == 0 {
			cmds = append(cmds, p.ZRange(ctx, s.keys.Devices(), 0, -1))
		}
		return nil
	})
	if err != nil {
		return nil, Unavailable("query devices: index", err)
	}
	for _, c := range cmds {
		fixed = append(fixed, c.Val())
	}
	slices.SortFunc(fixed, func(a, b []string) int { return cmp.Compare(len(a), len(b)) })
	out := slices.Clone(fixed[0])
	for _, other := range fixed[1:] {
		in := make(map[string]bool, len(other))
		for _, id := range other {
			in[id] = true
		}
		out = slices.DeleteFunc(out, func(id string) bool { return !in[id] })
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// prefixEnd is the smallest string greater than every string starting
// with p (IDs are ASCII, so p has no 0xff byte).
func prefixEnd(p string) string { return p[:len(p)-1] + string(p[len(p)-1]+1) }

// configState reads the state of a cfg hash (version, pending, desired,
// reported), the way backend/config's State reports pending and drift.
func configState(v []any) string {
	str := func(i int) string { s, _ := v[i].(string); return s }
	if n, _ := strconv.ParseInt(str(0), 10, 64); n <= 0 {
		return ConfigDefault
	}
	if str(1) == "1" {
		return ConfigPending
	}
	var desired, reported topics.Config
	if json.Unmarshal([]byte(str(2)), &desired) != nil || json.Unmarshal([]byte(str(3)), &reported) != nil {
		return ConfigInSync // nothing reported to differ from
	}
	if desired.SamplingInterval != reported.SamplingInterval || desired.UploadInterval != reported.UploadInterval ||
		!slices.Equal(desired.Registers, reported.Registers) {
		return ConfigDrift
	}
	return ConfigInSync
}

// sorts are the page orders; each is total (ties broken by ID).
var sorts = map[string]func(a, b row) int{
	SortID: func(a, b row) int { return cmp.Compare(a.dev.ID, b.dev.ID) },
	SortLastSeen: func(a, b row) int {
		return cmp.Or(-cmp.Compare(lastSeenMs(a), lastSeenMs(b)), cmp.Compare(a.dev.ID, b.dev.ID))
	},
	SortFirmware: func(a, b row) int {
		return cmp.Or(compareFirmware(a.dev.FirmwareVersion, b.dev.FirmwareVersion), cmp.Compare(a.dev.ID, b.dev.ID))
	},
}

func lastSeenMs(r row) int64 {
	if r.dev.LastSeen == nil {
		return -1
	}
	return r.dev.LastSeen.UnixMilli()
}

// compareFirmware orders versions FOTA cannot parse (and none) first, by
// bytes, then valid ones in FOTA's order, equal ones by bytes.
func compareFirmware(a, b string) int {
	ea, eb := fota.ValidVersion(a) == nil, fota.ValidVersion(b) == nil
	switch {
	case !ea && !eb:
		return cmp.Compare(a, b)
	case !ea:
		return -1
	case !eb:
		return 1
	}
	c, _ := fota.CompareVersions(a, b)
	return cmp.Or(c, cmp.Compare(a, b))
}

// cursorRow rebuilds, from a cursor, the sort position of the row it names.
func cursorRow(id string, lastSeen int64, fw string) row {
	r := row{dev: Device{ID: id, FirmwareVersion: fw}}
	if lastSeen >= 0 {
		t := time.UnixMilli(lastSeen)
		r.dev.LastSeen = &t
	}
	return r
}
