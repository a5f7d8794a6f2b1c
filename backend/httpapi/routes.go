package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ecowatt/ecowatt/backend/web"
	"github.com/ecowatt/ecowatt/topics"
)

// Roles, short for the table.
const (
	viewer   = topics.RoleViewer
	operator = topics.RoleOperator
	admin    = topics.RoleAdmin
)

// routeAccess is who may call each route: the one table of roles. Every
// pattern registered in addRoutes must have an entry (authMux panics
// otherwise, and TestRoleMatrix checks each against every role).
// viewer reads everything; operator also changes config and labels, sends
// commands and starts updates, rollouts and jobs; admin also provisions, uploads
// firmware, manages operator accounts and the device lifecycle. self: an
// operator may manage its own tokens whatever its role.
var routeAccess = map[string]access{
	"GET /healthz":         {min: public},
	"GET /readyz":          {min: public},
	"GET /metrics":         {min: public},
	"GET /{$}":             {min: public},
	"GET /static/":         {min: public},
	"POST /api/v1/login":   {min: public},
	"POST /api/v1/session": {min: public},
	// Signing out changes only the caller's own session.
	"DELETE /api/v1/session": {min: viewer},
	// The mount of the whole API (and its JSON 404): any valid token.
	"/api/":              {min: viewer},
	"GET /api/v1/whoami": {min: viewer},
	"GET /api/v1/events": {min: viewer},

	"GET /api/v1/devices":                     {min: viewer},
	"GET /api/v1/fleet/summary":               {min: viewer},
	"POST /api/v1/devices":                    {min: admin},
	"PATCH /api/v1/devices/{id}/labels":       {min: operator},
	"GET /api/v1/devices/{id}":                {min: viewer},
	"GET /api/v1/devices/{id}/telemetry":      {min: viewer},
	"GET /api/v1/devices/{id}/events":         {min: viewer},
	"POST /api/v1/devices/{id}/commands":      {min: operator},
	"GET /api/v1/devices/{id}/commands":       {min: viewer},
	"GET /api/v1/commands/{cid}":              {min: viewer},
	"DELETE /api/v1/commands/{cid}":           {min: operator},
	"GET /api/v1/devices/{id}/config":         {min: viewer},
	"PUT /api/v1/devices/{id}/config":         {min: operator},
	"GET /api/v1/devices/{id}/config/history": {min: viewer},
	"GET /api/v1/firmware/key":                {min: viewer},
	"GET /api/v1/firmware":                    {min: viewer},
	"POST /api/v1/firmware":                   {min: admin},
	"GET /api/v1/firmware/{version}":          {min: viewer},
	"GET /api/v1/devices/{id}/fota":           {min: viewer},
	"POST /api/v1/devices/{id}/fota":          {min: operator},
	"POST /api/v1/devices/{id}/rollback":      {min: operator},
	"GET /api/v1/rollouts":                    {min: viewer},
	"POST /api/v1/rollouts":                   {min: operator},
	"GET /api/v1/rollouts/{rid}":              {min: viewer},
	"POST /api/v1/rollouts/{rid}/pause":       {min: operator},
	"POST /api/v1/rollouts/{rid}/resume":      {min: operator},
	"POST /api/v1/rollouts/{rid}/abort":       {min: operator},
	"GET /api/v1/jobs":                        {min: viewer},
	"POST /api/v1/jobs":                       {min: operator},
	"GET /api/v1/jobs/{jid}":                  {min: viewer},
	"GET /api/v1/jobs/{jid}/devices":          {min: viewer},
	"POST /api/v1/jobs/{jid}/pause":           {min: operator},
	"POST /api/v1/jobs/{jid}/resume":          {min: operator},
	"POST /api/v1/jobs/{jid}/cancel":          {min: operator},

	// Lifecycle decides who may connect, or destroys a key: admin.
	"POST /api/v1/devices/{id}/disable": {min: admin},
	"POST /api/v1/devices/{id}/enable":  {min: admin},
	"DELETE /api/v1/devices/{id}":       {min: admin},
	// A rotation replaces a device's key: admin, like provisioning.
	"POST /api/v1/devices/{id}/rotate-key": {min: admin},
	"GET /api/v1/devices/{id}/rotate-key":  {min: viewer},

	"GET /api/v1/operators":                        {min: admin},
	"POST /api/v1/operators":                       {min: admin},
	"DELETE /api/v1/operators/{name}":              {min: admin},
	"GET /api/v1/operators/{name}/tokens":          {min: admin, self: true},
	"POST /api/v1/operators/{name}/tokens":         {min: admin, self: true},
	"DELETE /api/v1/operators/{name}/tokens/{tid}": {min: admin, self: true},
}

// addRoutes lists the whole API.
func addRoutes(m *http.ServeMux, d Deps) {
	log := d.Logger.With().Str("component", "httpapi").Logger()
	auth := newAuthenticator(log, d.AdminToken, d.Operators)
	mux := authMux{m, auth}

	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(log, d.Fleet, d.Ready))
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Gatherer, promhttp.HandlerOpts{}))

	// Everything under /api/ needs a token, checked before routing so
	// that unauthenticated callers learn nothing about the routes; each
	// route then checks its role (routeAccess).
	api := authMux{http.NewServeMux(), auth}
	api.Handle("GET /api/v1/whoami", handleWhoami())
	api.Handle("DELETE /api/v1/session", handleSessionDelete(log, d.Operators))
	api.Handle("GET /api/v1/devices", handleDevicesList(log, d.Fleet, d.Queries))
	api.Handle("GET /api/v1/fleet/summary", handleFleetSummary(log, d.Queries))
	api.Handle("POST /api/v1/devices", handleDevicesCreate(log, d.Fleet, d.Labels))
	api.Handle("PATCH /api/v1/devices/{id}/labels", handleLabelsPatch(log, d.Labels))
	api.Handle("GET /api/v1/devices/{id}", handleDeviceGet(log, d.Fleet, d.Telemetry))
	rot, _ := d.Fleet.(Rotations)
	api.Handle("POST /api/v1/devices/{id}/rotate-key", handleRotateKey(log, rot))
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
	api.Handle("GET /api/v1/rollouts", handleRolloutList(log, d.Rollouts))
	api.Handle("POST /api/v1/rollouts", handleRolloutCreate(log, d.Rollouts))
	api.Handle("GET /api/v1/rollouts/{rid}", handleRolloutGet(log, d.Rollouts))
	api.Handle("POST /api/v1/rollouts/{rid}/pause", handleRolloutAction(log, d.Rollouts, "pause"))
	api.Handle("POST /api/v1/rollouts/{rid}/resume", handleRolloutAction(log, d.Rollouts, "resume"))
	api.Handle("POST /api/v1/rollouts/{rid}/abort", handleRolloutAction(log, d.Rollouts, "abort"))
	api.Handle("GET /api/v1/jobs", handleJobList(log, d.Jobs))
	api.Handle("POST /api/v1/jobs", handleJobCreate(log, d.Jobs))
	api.Handle("GET /api/v1/jobs/{jid}", handleJobGet(log, d.Jobs))
	api.Handle("GET /api/v1/jobs/{jid}/devices", handleJobDevices(log, d.Jobs))
	api.Handle("POST /api/v1/jobs/{jid}/pause", handleJobAction(log, d.Jobs, "pause"))
	api.Handle("POST /api/v1/jobs/{jid}/resume", handleJobAction(log, d.Jobs, "resume"))
	api.Handle("POST /api/v1/jobs/{jid}/cancel", handleJobAction(log, d.Jobs, "cancel"))
	api.Handle("GET /api/v1/operators", handleOperatorList(log, d.Operators))
	api.Handle("POST /api/v1/operators", handleOperatorCreate(log, d.Operators))
	api.Handle("DELETE /api/v1/operators/{name}", handleOperatorDelete(log, d.Operators))
	api.Handle("GET /api/v1/operators/{name}/tokens", handleTokenList(log, d.Operators))
	api.Handle("POST /api/v1/operators/{name}/tokens", handleTokenCreate(log, d.Operators))
	api.Handle("DELETE /api/v1/operators/{name}/tokens/{tid}", handleTokenRevoke(log, d.Operators))

	// Device lifecycle (lifecycle.go): disable, enable, decommission and
	// purge.
	lc := lifecycleOf(d)
	api.Handle("POST /api/v1/devices/{id}/disable", handleDeviceDisable(log, lc))
	api.Handle("POST /api/v1/devices/{id}/enable", handleDeviceEnable(log, lc))
	api.Handle("DELETE /api/v1/devices/{id}", handleDeviceRemove(log, lc))

	api.Handle("/api/", handleNotFound(log, api.ServeMux))
	mux.Handle("/api/", api)
	// The live event stream also takes ?token= (EventSource sends no
	// headers): NewServer moves it into the header first.
	mux.Handle("GET /api/v1/events", handleEventStream(log, d.Events, d.KeepAlive))
	// Signing in with a name and password hands out a token.
	mux.Handle("POST /api/v1/login", handleLogin(log, d.Operators))
	mux.Handle("POST /api/v1/session", handleSessionCreate(log, d.Operators))

	// The dashboard page is public; it signs in itself.
	mux.Handle("GET /{$}", web.Handler())
	mux.Handle("GET /static/", web.Handler())
}
