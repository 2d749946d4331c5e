package api

import (
	"bytes"
	"encoding/json"
	"io"
)

type jsonReader struct{ b *bytes.Reader }

func newJSONReader(v any) *jsonReader {
	b, _ := json.Marshal(v)
	return &jsonReader{bytes.NewReader(b)}
}

func (r *jsonReader) reader() io.Reader {
	if r == nil {
		return nil
	}
	return r.b
}
