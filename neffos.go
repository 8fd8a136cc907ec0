package scaleout

import (
	"reflect"

	"github.com/kataras/neffos"
)

// fromField is the index of neffos.Message's unexported "from" field, where
// Server.Broadcast(neffos.Exclude(id), ...) records the excluded id.
// Message.Serialize drops it, so the engine reads it here and carries it in
// the envelope. nil when a neffos version has no such field.
var fromField = func() []int {
	f, ok := reflect.TypeOf(neffos.Message{}).FieldByName("from")
	if !ok || f.Type.Kind() != reflect.String {
		return nil
	}
	return f.Index
}()

// fromOf returns the connection id m must not be delivered to, set by
// Server.Broadcast(neffos.Exclude(id), m), or "".
func fromOf(m *neffos.Message) string {
	if fromField == nil {
		return ""
	}
	return reflect.ValueOf(m).Elem().FieldByIndex(fromField).String()
}
