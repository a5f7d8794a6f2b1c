package selector

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/fota"
)

// Limits on a selector's size, so a query's cost is bounded.
const (
	MaxLen       = 4096
	MaxTerms     = 32
	MaxSetValues = 64
)

// Error is a bad selector: the 0-based byte offset where parsing stopped
// and why.
type Error struct {
	Pos    int
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("selector: at byte %d: %s", e.Pos, e.Reason) }

// Parse reads a selector. The empty (or all-space) string is the empty
// selector, which matches every device. Any error is an *Error.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLen {
		return Selector{}, &Error{Pos: MaxLen, Reason: fmt.Sprintf("selector longer than %d bytes", MaxLen)}
	}
	p := &parser{s: s}
	p.space()
	if p.eof() {
		return Selector{}, nil
	}
	var sel Selector
	for {
		if len(sel.Terms) == MaxTerms {
			return Selector{}, p.errorf("more than %d terms", MaxTerms)
		}
		t, err := p.term()
		if err != nil {
			return Selector{}, err
		}
		sel.Terms = append(sel.Terms, t)
		p.space()
		if p.eof() {
			return sel, nil
		}
		if p.peek() != ',' {
			return Selector{}, p.errorf("expected ',' or the end after a term, found %q", p.peek())
		}
		p.i++
	}
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool  { return p.i >= len(p.s) }
func (p *parser) peek() byte { return p.s[p.i] }

func (p *parser) space() {
	for !p.eof() && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *parser) errorf(format string, args ...any) *Error {
	return &Error{Pos: p.i, Reason: fmt.Sprintf(format, args...)}
}

func (p *parser) errAt(pos int, format string, args ...any) *Error {
	return &Error{Pos: pos, Reason: fmt.Sprintf(format, args...)}
}

// atTermEnd reports whether only spaces stand before ',' or the end.
func (p *parser) atTermEnd() bool {
	j := p.i
	for j < len(p.s) && p.s[j] == ' ' {
		j++
	}
	return j == len(p.s) || p.s[j] == ','
}

// word scans a key: everything up to a space, an operator or punctuation.
func (p *parser) word() (string, int) {
	start := p.i
	for !p.eof() && strings.IndexByte(" ,()=!<>~", p.peek()) < 0 {
		p.i++
	}
	return p.s[start:p.i], start
}

func (p *parser) term() (Term, error) {
	p.space()
	if p.eof() || p.peek() == ',' {
		return Term{}, p.errorf("empty term")
	}
	if p.peek() == '!' {
		p.i++
		p.space()
		key, at := p.word()
		t, err := p.key(key, at)
		if err != nil {
			return Term{}, err
		}
		if t.Field {
			return Term{}, p.errAt(at, "!%s: a built-in field needs an operator and a value", key)
		}
		if !p.atTermEnd() {
			return Term{}, p.errorf("!%s takes no operator or value", key)
		}
		t.Op = NotExists
		return t, nil
	}
	key, at := p.word()
	t, err := p.key(key, at)
	if err != nil {
		return Term{}, err
	}
	afterKey := p.i
	p.space()
	spaced := p.i > afterKey
	if p.atTermEnd() {
		if t.Field {
			return Term{}, p.errAt(afterKey, "%s: a built-in field needs an operator and a value", key)
		}
		t.Op = Exists
		return t, nil
	}
	opAt := p.i
	t.Op = p.op(spaced)
	if t.Op == 0 {
		return Term{}, p.errorf("expected an operator (=, !=, in, notin, <, <=, >, >=, ~) or ',' after %q", key)
	}
	if err := allowed(t, opAt); err != nil {
		return Term{}, err
	}
	if t.Op == In || t.Op == NotIn {
		return p.set(t)
	}
	p.space()
	start := p.i
	for !p.eof() && p.peek() != ',' {
		p.i++
	}
	raw := strings.TrimRight(p.s[start:p.i], " ")
	if err := p.value(&t, raw, start); err != nil {
		return Term{}, err
	}
	t.Values = []string{raw}
	return t, nil
}

// key classifies a scanned key as a built-in field or a label.
func (p *parser) key(key string, at int) (Term, error) {
	if key == "" {
		if p.eof() {
			return Term{}, p.errAt(at, "expected a key, found the end")
		}
		return Term{}, p.errAt(at, "expected a key, found %q", p.s[at])
	}
	if slices.Contains(Reserved, key) {
		return Term{Key: key, Field: true}, nil
	}
	if off, reason := checkKey(key); reason != "" {
		return Term{}, p.errAt(at+off, "%s", reason)
	}
	return Term{Key: key}, nil
}

// op reads an operator; in and notin only after a space or before '('.
func (p *parser) op(spaced bool) Op {
	rest := p.s[p.i:]
	for _, o := range []struct {
		text string
		op   Op
	}{{"!=", Ne}, {"<=", Le}, {">=", Ge}, {"=", Eq}, {"<", Lt}, {">", Gt}, {"~", Prefix}} {
		if strings.HasPrefix(rest, o.text) {
			p.i += len(o.text)
			return o.op
		}
	}
	if !spaced {
		return 0
	}
	for _, o := range []struct {
		text string
		op   Op
	}{{"notin", NotIn}, {"in", In}} {
		if w, ok := strings.CutPrefix(rest, o.text); ok && (w == "" || w[0] == ' ' || w[0] == '(') {
			p.i += len(o.text)
			return o.op
		}
	}
	return 0
}

// allowed checks that t's operator applies to its key.
func allowed(t Term, at int) *Error {
	var ok []Op
	switch {
	case !t.Field:
		ok = []Op{Eq, Ne, In, NotIn}
	case t.Key == FieldID:
		ok = []Op{Eq, Ne, In, NotIn, Prefix}
	case t.Key == FieldOnline, t.Key == FieldConfigDrift:
		ok = []Op{Eq, Ne}
	case t.Key == FieldFirmware:
		ok = []Op{Eq, Ne, In, NotIn, Lt, Le, Gt, Ge}
	case t.Key == FieldConfigVersion:
		ok = []Op{Eq, Ne, Lt, Le, Gt, Ge}
	case t.Key == FieldLastSeen:
		ok = []Op{Lt, Le, Gt, Ge}
	}
	if slices.Contains(ok, t.Op) {
		return nil
	}
	what := "a label"
	if t.Field {
		what = "built-in field " + t.Key
	}
	texts := make([]string, len(ok))
	for i, o := range ok {
		texts[i] = strings.TrimSpace(opText[o])
	}
	return &Error{Pos: at, Reason: fmt.Sprintf("operator %s does not apply to %s (use %s)", strings.TrimSpace(opText[t.Op]), what, strings.Join(texts, ", "))}
}

// set reads "(v1,v2,...)" after in/notin.
func (p *parser) set(t Term) (Term, error) {
	p.space()
	if p.eof() || p.peek() != '(' {
		return Term{}, p.errorf("expected '(' after %s", strings.TrimSpace(opText[t.Op]))
	}
	p.i++
	t.Values = []string{}
	for {
		p.space()
		start := p.i
		for !p.eof() && p.peek() != ',' && p.peek() != ')' {
			p.i++
		}
		if p.eof() {
			return Term{}, p.errorf("missing ')'")
		}
		raw := strings.TrimRight(p.s[start:p.i], " ")
		if raw == "" {
			return Term{}, p.errAt(start, "empty value in the list")
		}
		if err := p.value(&t, raw, start); err != nil {
			return Term{}, err
		}
		if len(t.Values) == MaxSetValues {
			return Term{}, p.errAt(start, "more than %d values in the list", MaxSetValues)
		}
		t.Values = append(t.Values, raw)
		if p.peek() == ')' {
			p.i++
			return t, nil
		}
		p.i++ // ','
	}
}

// value checks one operand of t at byte start and records its parsed form.
func (p *parser) value(t *Term, v string, start int) *Error {
	if !t.Field {
		if off, reason := checkValue(v); reason != "" {
			return p.errAt(start+off, "%s", reason)
		}
		return nil
	}
	if v == "" {
		return p.errAt(start, "%s needs a value", t.Key)
	}
	switch t.Key {
	case FieldID:
		if topics.ValidateID(v) != nil {
			return p.errAt(start, "%q is not a device ID (1-64 of A-Z a-z 0-9 _ -)", v)
		}
	case FieldOnline, FieldConfigDrift:
		b, err := strconv.ParseBool(v)
		if err != nil || (v != "true" && v != "false") {
			return p.errAt(start, "%s takes true or false, not %q", t.Key, v)
		}
		t.b = b
	case FieldFirmware:
		if err := fota.ValidVersion(v); err != nil {
			return p.errAt(start, "%q is not a firmware version (semver-ish: 1.0.4, 1.1.0-rc.1)", v)
		}
	case FieldConfigVersion:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || strings.TrimLeft(v, "0123456789") != "" {
			return p.errAt(start, "config_version takes a non-negative integer, not %q", v)
		}
		t.num = n
	case FieldLastSeen:
		d, ok := parseAge(v)
		if !ok {
			return p.errAt(start, "last_seen takes a positive age (30s, 15m, 1h, 7d), not %q", v)
		}
		t.age = d
	}
	return nil
}
