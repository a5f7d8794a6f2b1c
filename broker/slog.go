package broker

import (
	"context"
	"log/slog"

	"github.com/rs/zerolog"
)

// newSlogLogger returns a slog.Logger writing to log, for mochi.
func newSlogLogger(log zerolog.Logger) *slog.Logger {
	return slog.New(&slogHandler{log: log})
}

// slogHandler is a slog.Handler that writes to a zerolog.Logger.
type slogHandler struct {
	log    zerolog.Logger
	prefix string // group prefix for keys, "a.b." or ""
}

var _ slog.Handler = (*slogHandler)(nil)

func zerologLevel(l slog.Level) zerolog.Level {
	switch {
	case l >= slog.LevelError:
		return zerolog.ErrorLevel
	case l >= slog.LevelWarn:
		return zerolog.WarnLevel
	case l >= slog.LevelInfo:
		return zerolog.InfoLevel
	default:
		return zerolog.DebugLevel
	}
}

func (h *slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	zl := zerologLevel(l)
	return zl >= h.log.GetLevel() && zl >= zerolog.GlobalLevel()
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	ev := h.log.WithLevel(zerologLevel(r.Level))
	if ev == nil {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(ev, h.prefix, a)
		return true
	})
	ev.Msg(r.Message)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	ctx := h.log.With()
	for _, a := range attrs {
		ctx = addCtxAttr(ctx, h.prefix, a)
	}
	return &slogHandler{log: ctx.Logger(), prefix: h.prefix}
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &slogHandler{log: h.log, prefix: h.prefix + name + "."}
}

// addAttr adds a to ev, flattening groups into dotted keys.
func addAttr(ev *zerolog.Event, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	key := prefix + a.Key
	switch v.Kind() {
	case slog.KindGroup:
		p := prefix
		if a.Key != "" {
			p = key + "."
		}
		for _, g := range v.Group() {
			addAttr(ev, p, g)
		}
	case slog.KindString:
		ev.Str(key, v.String())
	case slog.KindInt64:
		ev.Int64(key, v.Int64())
	case slog.KindUint64:
		ev.Uint64(key, v.Uint64())
	case slog.KindFloat64:
		ev.Float64(key, v.Float64())
	case slog.KindBool:
		ev.Bool(key, v.Bool())
	case slog.KindDuration:
		ev.Dur(key, v.Duration())
	case slog.KindTime:
		ev.Time(key, v.Time())
	default:
		if err, ok := v.Any().(error); ok {
			ev.AnErr(key, err)
		} else {
			ev.Interface(key, v.Any())
		}
	}
}

// addCtxAttr is addAttr for a logger context (slog.Logger.With).
func addCtxAttr(ctx zerolog.Context, prefix string, a slog.Attr) zerolog.Context {
	v := a.Value.Resolve()
	key := prefix + a.Key
	switch v.Kind() {
	case slog.KindGroup:
		p := prefix
		if a.Key != "" {
			p = key + "."
		}
		for _, g := range v.Group() {
			ctx = addCtxAttr(ctx, p, g)
		}
		return ctx
	case slog.KindString:
		return ctx.Str(key, v.String())
	case slog.KindInt64:
		return ctx.Int64(key, v.Int64())
	case slog.KindBool:
		return ctx.Bool(key, v.Bool())
	case slog.KindDuration:
		return ctx.Dur(key, v.Duration())
	default:
		if err, ok := v.Any().(error); ok {
			return ctx.AnErr(key, err)
		}
		return ctx.Interface(key, v.Any())
	}
}
