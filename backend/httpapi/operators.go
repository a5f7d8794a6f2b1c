package httpapi

import (
	"net/http"

	"github.com/ecowatt/ecowatt/backend"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/rs/zerolog"
)

// operatorsOff answers when the server runs without operator accounts.
var operatorsOff = backend.Errorf(backend.CodeUnavailable, "", "operator accounts are not enabled on this server")

func operatorsHandler(log zerolog.Logger, o Operators, st int, fn func(w http.ResponseWriter, r *http.Request) (any, error)) http.Handler {
	return serviceHandler(log, o == nil, operatorsOff, st, fn)
}

// whoami is the caller as the API sees it.
type whoami struct {
	Operator  string `json:"operator"`
	Role      string `json:"role"`
	Bootstrap bool   `json:"bootstrap,omitempty"` // the --admin-token
}

func handleWhoami() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := identityFrom(r.Context())
		encode(w, http.StatusOK, whoami{Operator: id.name, Role: string(id.role), Bootstrap: id.bootstrap})
	})
}

func handleOperatorList(log zerolog.Logger, o Operators) http.Handler {
	type response struct {
		Operators []backend.Operator `json:"operators"`
	}
	return operatorsHandler(log, o, http.StatusOK, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		ops, err := o.Operators(r.Context())
		return response{Operators: ops}, err
	})
}

func handleOperatorCreate(log zerolog.Logger, o Operators) http.Handler {
	type request struct {
		Name     string      `json:"name"`
		Password string      `json:"password"`
		Role     topics.Role `json:"role"`
	}
	return operatorsHandler(log, o, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req request
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		op, err := o.CreateOperator(r.Context(), req.Name, req.Password, req.Role)
		if err == nil {
			w.Header().Set("Location", "/api/v1/operators/"+op.Name)
		}
		return op, err
	})
}

func handleOperatorDelete(log zerolog.Logger, o Operators) http.Handler {
	type response struct {
		Deleted string `json:"deleted"`
	}
	return operatorsHandler(log, o, http.StatusOK, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		name := r.PathValue("name")
		return response{Deleted: name}, o.DeleteOperator(r.Context(), name)
	})
}

// createdToken is a new token with its secret, the one time it is shown.
type createdToken struct {
	backend.Token
	Secret string      `json:"token"`
	Role   topics.Role `json:"role,omitempty"`
}

func handleTokenCreate(log zerolog.Logger, o Operators) http.Handler {
	type request struct {
		Label string `json:"label"`
	}
	return operatorsHandler(log, o, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req request
		if err := decodeOptional(w, r, &req); err != nil {
			return nil, err
		}
		t, secret, err := o.CreateToken(r.Context(), r.PathValue("name"), req.Label, 0)
		if err != nil {
			return nil, err
		}
		w.Header().Set("Cache-Control", "no-store")
		return createdToken{Token: t, Secret: secret}, nil
	})
}

func handleTokenList(log zerolog.Logger, o Operators) http.Handler {
	type response struct {
		Operator string          `json:"operator"`
		Tokens   []backend.Token `json:"tokens"`
	}
	return operatorsHandler(log, o, http.StatusOK, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		ts, err := o.Tokens(r.Context(), r.PathValue("name"))
		return response{Operator: r.PathValue("name"), Tokens: ts}, err
	})
}

func handleTokenRevoke(log zerolog.Logger, o Operators) http.Handler {
	type response struct {
		Revoked string `json:"revoked"`
	}
	return operatorsHandler(log, o, http.StatusOK, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return response{Revoked: r.PathValue("tid")}, o.RevokeToken(r.Context(), r.PathValue("name"), r.PathValue("tid"))
	})
}

// checkPassword is the shared part of login and session: one 401 for an
// unknown name and a wrong password.
func checkPassword(log zerolog.Logger, o Operators, r *http.Request, name, password string) (topics.Role, error) {
	role, err := o.AuthenticateOperator(r.Context(), name, password)
	if err != nil {
		if c := backend.ErrorCode(err); c == backend.CodeNotFound || c == backend.CodeUnauthorized {
			log.Warn().Str("operator", name).Str("remote", r.RemoteAddr).Msg("api login refused")
			return "", backend.Errorf(backend.CodeUnauthorized, "", "wrong operator name or password")
		}
		return "", err
	}
	return role, nil
}

// handleSessionCreate signs the dashboard in: the session is an API token
// that expires after SessionTTL, in an HttpOnly cookie JavaScript cannot
// read.
func handleSessionCreate(log zerolog.Logger, o Operators) http.Handler {
	type request struct {
		Name     string `json:"name"`
		Password string `json:"password"`
	}
	return operatorsHandler(log, o, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req request
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		role, err := checkPassword(log, o, r, req.Name, req.Password)
		if err != nil {
			return nil, err
		}
		_, secret, err := o.CreateToken(backend.WithOperator(r.Context(), req.Name), req.Name, "dashboard session", SessionTTL)
		if err != nil {
			return nil, err
		}
		http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: secret, Path: "/", MaxAge: int(SessionTTL.Seconds()),
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		w.Header().Set("Cache-Control", "no-store")
		return whoami{Operator: req.Name, Role: string(role)}, nil
	})
}

// handleSessionDelete signs out: the session's token is revoked and the
// cookie cleared.
func handleSessionDelete(log zerolog.Logger, o Operators) http.Handler {
	type response struct {
		SignedOut string `json:"signed_out"`
	}
	return operatorsHandler(log, o, http.StatusOK, func(w http.ResponseWriter, r *http.Request) (any, error) {
		id, _ := identityFrom(r.Context())
		if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
			if err := o.RevokeSecret(r.Context(), c.Value); err != nil {
				return nil, err
			}
		}
		http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		return response{SignedOut: id.name}, nil
	})
}

// handleLogin checks a name and password and hands out a new API token
// for that operator (ecowatt login). Unknown names and wrong passwords get
// the same 401.
func handleLogin(log zerolog.Logger, o Operators) http.Handler {
	type request struct {
		Name     string `json:"name"`
		Password string `json:"password"`
		Label    string `json:"label"`
	}
	return operatorsHandler(log, o, http.StatusCreated, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req request
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		role, err := checkPassword(log, o, r, req.Name, req.Password)
		if err != nil {
			return nil, err
		}
		if req.Label == "" {
			req.Label = "login"
		}
		ctx := backend.WithOperator(r.Context(), req.Name)
		t, secret, err := o.CreateToken(ctx, req.Name, req.Label, 0)
		if err != nil {
			return nil, err
		}
		w.Header().Set("Cache-Control", "no-store")
		return createdToken{Token: t, Secret: secret, Role: role}, nil
	})
}
