package httpapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/backend/selector"
	"github.com/rs/zerolog"
)

// FleetQueries serves paged, filtered fleet views; *backend.Service has it.
type FleetQueries interface {
	QueryDevices(ctx context.Context, q backend.FleetQuery) (backend.FleetPage, error)
	Summary(ctx context.Context, sel selector.Selector) (backend.FleetSummary, error)
}

var _ FleetQueries = (*backend.Service)(nil)

var errNoQueries = backend.Errorf(backend.CodeUnavailable, "", "fleet queries are not enabled on this server")

// pagedParams are the query parameters that ask GET /api/v1/devices for
// one page; without any of them it answers the whole list, as before.
var pagedParams = []string{"selector", "sort", "limit", "cursor"}

func isPaged(v url.Values) bool {
	for _, p := range pagedParams {
		if v.Has(p) {
			return true
		}
	}
	return false
}

// parseSelector reads ?selector=; a bad one is a 400 naming the byte and
// the reason.
func parseSelector(v url.Values) (selector.Selector, error) {
	sel, err := selector.Parse(v.Get("selector"))
	if err != nil {
		var se *selector.Error
		if errors.As(err, &se) {
			return selector.Selector{}, &backend.Error{Code: backend.CodeInvalid, Field: "selector", Message: se.Error(), Err: err}
		}
		return selector.Selector{}, err
	}
	return sel, nil
}

// handleDevicesPage answers GET /api/v1/devices?selector=&sort=&limit=&cursor=.
func handleDevicesPage(w http.ResponseWriter, r *http.Request, log zerolog.Logger, q FleetQueries) {
	if q == nil {
		writeError(w, log, errNoQueries)
		return
	}
	v := r.URL.Query()
	sel, err := parseSelector(v)
	if err != nil {
		writeError(w, log, err)
		return
	}
	fq := backend.FleetQuery{Selector: sel, Sort: v.Get("sort"), Cursor: v.Get("cursor")}
	if v.Has("limit") {
		n, err := strconv.Atoi(v.Get("limit"))
		if err != nil || n < 1 {
			writeError(w, log, backend.Errorf(backend.CodeInvalid, "limit", "limit must be 1-%d", backend.MaxPageLimit))
			return
		}
		fq.Limit = n
	}
	page, err := q.QueryDevices(r.Context(), fq)
	if err != nil {
		writeError(w, log, err)
		return
	}
	encode(w, http.StatusOK, page)
}

// handleFleetSummary answers GET /api/v1/fleet/summary?selector=.
func handleFleetSummary(log zerolog.Logger, q FleetQueries) http.Handler {
	return serviceHandler(log, q == nil, errNoQueries, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		sel, err := parseSelector(r.URL.Query())
		if err != nil {
			return nil, err
		}
		return q.Summary(r.Context(), sel)
	})
}
