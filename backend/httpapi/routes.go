package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// addRoutes lists the whole API.
func addRoutes(mux *http.ServeMux, d Deps) {
	log := d.Logger.With().Str("component", "httpapi").Logger()

	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(log, d.Fleet, d.Ready))
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{}))

	// Everything under /api/ needs the admin token, checked before routing
	// so that unauthenticated callers learn nothing about the routes.
	api := http.NewServeMux()
	api.Handle("GET /api/v1/devices", handleDevicesList(log, d.Fleet))
	api.Handle("POST /api/v1/devices", handleDevicesCreate(log, d.Fleet))
	api.Handle("GET /api/v1/devices/{id}", handleDeviceGet(log, d.Fleet))
	api.Handle("/api/", handleNotFound(log))
	mux.Handle("/api/", requireAdmin(log, d.AdminToken, api))
}
