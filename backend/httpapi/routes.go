package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ecowatt/ecowatt/backend/web"
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
	api.Handle("GET /api/v1/devices", handleDevicesList(log, d.Fleet, d.Queries))
	api.Handle("GET /api/v1/fleet/summary", handleFleetSummary(log, d.Queries))
	api.Handle("POST /api/v1/devices", handleDevicesCreate(log, d.Fleet, d.Labels))
	api.Handle("PATCH /api/v1/devices/{id}/labels", handleLabelsPatch(log, d.Labels))
	api.Handle("GET /api/v1/devices/{id}", handleDeviceGet(log, d.Fleet, d.Telemetry))
	rot, _ := d.Fleet.(Rotations)
	api.Handle("POST /api/v1/devices/{id}/rotate-key", handleRotateKey(log, rot)) // role: admin
	api.Handle("GET /api/v1/devices/{id}/rotate-key", handleRotationGet(log, rot))
	api.Handle("GET /api/v1/devices/{id}/telemetry", handleTelemetry(log, d.Fleet, d.Telemetry))
	api.Handle("GET /api/v1/devices/{id}/events", handleDeviceEvents(log, d.Events))
	api.Handle("POST /api/v1/devices/{id}/commands", handleCommandSubmit(log, d.Commands))
	api.Handle("GET /api/v1/devices/{id}/commands", handleCommandList(log, d.Commands))
	api.Handle("GET /api/v1/commands/{cid}", handleCommandGet(log, d.Commands))
	api.Handle("DELETE /api/v1/commands/{cid}", handleCommandCancel(log, d.Commands))
	api.Handle("GET /api/v1/devices/{id}/config", handleConfigGet(log, d.Configs))
	api.Handle("PUT /api/v1/devices/{id}/config", handleConfigSet(log, d.Configs))
	api.Handle("GET /api/v1/devices/{id}/config/history", handleConfigHistory(log, d.Configs))
	api.Handle("GET /api/v1/firmware/key", handleFirmwareKey(log, d.FOTA))
	api.Handle("GET /api/v1/firmware", handleFirmwareList(log, d.FOTA))
	api.Handle("POST /api/v1/firmware", handleFirmwareUpload(log, d.FOTA))
	api.Handle("GET /api/v1/firmware/{version}", handleFirmwareGet(log, d.FOTA))
	api.Handle("GET /api/v1/devices/{id}/fota", handleDeviceFOTAGet(log, d.FOTA))
	api.Handle("POST /api/v1/devices/{id}/fota", handleDeviceFOTAStart(log, d.FOTA))
	api.Handle("POST /api/v1/devices/{id}/rollback", handleDeviceRollback(log, d.FOTA))
	api.Handle("GET /api/v1/rollouts", handleRolloutList(log, d.FOTA))
	api.Handle("POST /api/v1/rollouts", handleRolloutCreate(log, d.FOTA))
	api.Handle("GET /api/v1/rollouts/{rid}", handleRolloutGet(log, d.FOTA))
	api.Handle("POST /api/v1/rollouts/{rid}/pause", handleRolloutAction(log, d.FOTA, "pause"))
	api.Handle("POST /api/v1/rollouts/{rid}/resume", handleRolloutAction(log, d.FOTA, "resume"))
	api.Handle("POST /api/v1/rollouts/{rid}/abort", handleRolloutAction(log, d.FOTA, "abort"))
	api.Handle("/api/", handleNotFound(log, api))
	mux.Handle("/api/", requireAdmin(log, d.AdminToken, api))
	// The live event stream also takes ?token= (EventSource sends no headers).
	mux.Handle("GET /api/v1/events", tokenFromQuery(requireAdmin(log, d.AdminToken, handleEventStream(log, d.Events, d.KeepAlive))))

	// The dashboard page is public; it asks for the admin token itself.
	mux.Handle("GET /{$}", web.Handler())
	mux.Handle("GET /static/", web.Handler())
}
