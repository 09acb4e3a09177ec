// SPDX-License-Identifier: MIT
// Chat templates: values, their conversions (printing, JSON, comparison), and the sizes a render may build.
#include "text/jinja/internal.h"

#include "base/unicode.h"

#include <cmath>
#include <cstring>
#include <sstream>

namespace together::jinja::detail {

[[noreturn]] void limitError(const std::string& msg) { throw Error("chat template: " + msg); }

thread_local RenderBudget* t_budget = nullptr;

void chargeBytes(size_t n)
{
    if (t_budget && (t_budget->builtBytes += static_cast<int64_t>(n)) > kMaxBuiltBytes)
        limitError("the template built more than " + std::to_string(kMaxBuiltBytes >> 20) + " MiB of text (the limit)");
}

void chargeVisits(int64_t n)
{
    if (t_budget && (t_budget->visits += n) > kMaxVisits)
        limitError("printing and comparing values visited more than " + std::to_string(kMaxVisits) +
                   " items (the limit; a value shared many times over is as large as its expansion)");
}

namespace {

thread_local std::vector<std::shared_ptr<void>> t_released;
thread_local bool t_releasing = false;

} // namespace

Value::~Value()
{
    std::shared_ptr<void> last;
    if (auto* a = std::get_if<std::shared_ptr<Array>>(&v); a && a->use_count() == 1)
        last = std::move(*a);
    else if (auto* o = std::get_if<std::shared_ptr<Object>>(&v); o && o->use_count() == 1)
        last = std::move(*o);
    else
        return;
    t_released.push_back(std::move(last));
    if (t_releasing)
        return; // an outer destructor is emptying the list
    t_releasing = true;
    while (!t_released.empty()) {
        std::shared_ptr<void> next = std::move(t_released.back());
        t_released.pop_back();
        next.reset(); // its items' destructors add their own containers to the list
    }
    t_releasing = false;
}

void checkStringSize(size_t n)
{
    if (n > kMaxStringBytes)
        limitError("a string would be " + std::to_string(n) + " bytes, over the " + std::to_string(kMaxStringBytes >> 20) + " MiB limit");
}

void checkItems(size_t n)
{
    if (n > kMaxItems)
        limitError("a list would have " + std::to_string(n) + " items, over the limit of " + std::to_string(kMaxItems));
}

Value makeArray(Array a)
{
    checkItems(a.size());
    return Value(std::make_shared<Array>(std::move(a)));
}
Value makeObject() { return Value(std::make_shared<Object>()); }
Value makeFn(std::function<Value(const Args&)> f)
{
    auto c = std::make_shared<Callable>(Callable{std::move(f)});
    if (t_budget)
        t_budget->callables.push_back(c);
    return Value(std::move(c));
}

// Whether `container` is, or holds at any depth, the list or mapping at `target`. A value that held itself
// would make printing it recurse without end (and leak: the values are reference-counted), so the two ways a
// template mutates a value (list.append, ns.attr = …) refuse it.
bool reaches(const Value& container, const void* target)
{
    std::vector<const Value*> todo{&container};
    size_t visited = 0;
    while (!todo.empty()) {
        const Value* v = todo.back();
        todo.pop_back();
        if (++visited > kMaxItems)
            limitError("a value nests more than " + std::to_string(kMaxItems) + " items");
        chargeVisits(1);
        if (v->isArray()) {
            if (&v->arr() == target)
                return true;
            for (auto& x : v->arr())
                todo.push_back(&x);
        } else if (v->isObject()) {
            if (&v->obj() == target)
                return true;
            for (auto& kv : v->obj().items)
                todo.push_back(&kv.second);
        }
    }
    return false;
}

bool truthy(const Value& v)
{
    if (v.isUndefined() || v.isNone())
        return false;
    if (v.isBool())
        return std::get<bool>(v.v);
    if (v.isInt())
        return v.integer() != 0;
    if (v.isFloat())
        return v.num() != 0.0;
    if (v.isString())
        return !v.str().s.empty();
    if (v.isArray())
        return !v.arr().empty();
    if (v.isObject())
        return v.obj().isNamespace || !v.obj().items.empty();
    return true;
}

bool isMarked(const Value& v);

std::string pyRepr(const Value& v, bool quoteStrings);

std::string formatFloat(double d)
{
    if (std::isinf(d))
        return d > 0 ? "inf" : "-inf";
    if (std::isnan(d))
        return "nan";
    if (d == std::floor(d) && std::fabs(d) < 1e16) {
        std::ostringstream ss;
        ss.precision(1);
        ss << std::fixed << d;
        return ss.str();
    }
    std::ostringstream ss;
    ss.precision(17);
    ss << d;
    // shortest representation that round-trips, as Python's repr does
    for (int p = 1; p <= 17; ++p) {
        std::ostringstream t;
        t.precision(p);
        t << d;
        if (std::strtod(t.str().c_str(), nullptr) == d) // (not stod: it throws on subnormals)
            return t.str();
    }
    return ss.str();
}

namespace {

// Appends v's Python repr to out, checking the size as it grows (a shared value's repr can be far larger than
// the value) and the depth (a list nested a million deep).
void reprInto(const Value& v, bool quoteStrings, std::string& out)
{
    const DepthGuard depth;
    chargeVisits(1);
    if (v.isUndefined())
        return;
    if (v.isNone())
        out += "None";
    else if (v.isBool())
        out += std::get<bool>(v.v) ? "True" : "False";
    else if (v.isInt())
        out += std::to_string(v.integer());
    else if (v.isFloat())
        out += formatFloat(v.num());
    else if (v.isString() && !quoteStrings) {
        checkStringSize(out.size() + v.str().s.size());
        out += v.str().s;
    } else if (v.isString()) {
        const std::string& s = v.str().s; // (at most kMaxStringBytes: quoting at most doubles it)
        const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
        out += q;
        for (char c : s) {
            if (c == '\\')
                out += "\\\\";
            else if (c == '\n')
                out += "\\n";
            else if (c == q)
                out += std::string("\\") + c;
            else
                out += c;
        }
        out += q;
        checkStringSize(out.size());
    } else if (v.isArray()) {
        out += '[';
        bool first = true;
        for (auto& x : v.arr()) {
            out += first ? "" : ", ";
            reprInto(x, true, out);
            checkStringSize(out.size());
            first = false;
        }
        out += ']';
    } else if (v.isObject()) {
        out += '{';
        bool first = true;
        for (auto& [k, x] : v.obj().items) {
            out += first ? "'" : ", '";
            out += k;
            out += "': ";
            reprInto(x, true, out);
            checkStringSize(out.size());
            first = false;
        }
        out += '}';
    } else {
        out += "<function>";
    }
}

} // namespace

std::string pyRepr(const Value& v, bool quoteStrings)
{
    std::string out;
    reprInto(v, quoteStrings, out);
    return out;
}

Str toStr(const Value& v)
{
    if (v.isString())
        return v.str();
    return Str::derived(pyRepr(v, false), isMarked(v));
}

bool isMarked(const Value& v)
{
    const DepthGuard depth;
    chargeVisits(1);
    if (v.isString())
        return v.str().anyMarked();
    if (v.isArray()) {
        for (auto& x : v.arr())
            if (isMarked(x))
                return true;
    }
    if (v.isObject()) {
        for (auto& [k, x] : v.obj().items)
            if (isMarked(x))
                return true;
    }
    return false;
}

namespace {

// `nodes` counts what this conversion built: a value shared many times over would become a JSON tree of its
// full expansion.
json toJsonCounted(const Value& v, size_t& nodes)
{
    const DepthGuard depth;
    chargeVisits(1);
    if (++nodes > kMaxItems)
        limitError("a value of more than " + std::to_string(kMaxItems) + " items cannot be made JSON (the limit)");
    if (v.isUndefined() || v.isNone())
        return nullptr;
    if (v.isBool())
        return std::get<bool>(v.v);
    if (v.isInt())
        return v.integer();
    if (v.isFloat())
        return v.num();
    if (v.isString())
        return v.str().s;
    if (v.isArray()) {
        json a = json::array();
        for (auto& x : v.arr())
            a.push_back(toJsonCounted(x, nodes));
        return a;
    }
    if (v.isObject()) {
        json o = json::object();
        for (auto& [k, x] : v.obj().items)
            o[k] = toJsonCounted(x, nodes);
        return o;
    }
    return nullptr;
}

} // namespace

json toJson(const Value& v)
{
    size_t nodes = 0;
    return toJsonCounted(v, nodes);
}

// json.dumps as transformers' tojson calls it: ensure_ascii=False, insertion order, separators (", ", ": ")
// without indent and ("," , ": ") with it.
void dumpPython(const json& j, std::string& out, int indent, int depth)
{
    auto nl = [&](int d) {
        if (indent > 0) {
            out += '\n';
            out.append(static_cast<size_t>(indent * d), ' ');
        }
    };
    switch (j.type()) {
    case json::value_t::object: {
        if (j.empty()) {
            out += "{}";
            return;
        }
        out += '{';
        bool first = true;
        for (auto& [k, v] : j.items()) {
            if (!first)
                out += indent > 0 ? "," : ", ";
            first = false;
            nl(depth + 1);
            out += json(k).dump(-1, ' ', false, json::error_handler_t::replace);
            out += ": ";
            dumpPython(v, out, indent, depth + 1);
        }
        nl(depth);
        out += '}';
        return;
    }
    case json::value_t::array: {
        if (j.empty()) {
            out += "[]";
            return;
        }
        out += '[';
        bool first = true;
        for (auto& v : j) {
            if (!first)
                out += indent > 0 ? "," : ", ";
            first = false;
            nl(depth + 1);
            dumpPython(v, out, indent, depth + 1);
        }
        nl(depth);
        out += ']';
        return;
    }
    case json::value_t::number_float:
        out += formatFloat(j.get<double>());
        return;
    default:
        out += j.dump(-1, ' ', false, json::error_handler_t::replace);
    }
}

Value fromJson(const json& j, bool mark)
{
    switch (j.type()) {
    case json::value_t::null:
        return Value(None{});
    case json::value_t::boolean:
        return Value(j.get<bool>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
        return Value(j.get<int64_t>());
    case json::value_t::number_float:
        return Value(j.get<double>());
    case json::value_t::string:
        return Value(Str::derived(j.get<std::string>(), mark));
    case json::value_t::array: {
        Array a;
        for (auto& x : j)
            a.push_back(fromJson(x, mark));
        return makeArray(std::move(a));
    }
    case json::value_t::object: {
        auto o = std::make_shared<Object>();
        for (auto& [k, x] : j.items())
            o->items.emplace_back(k, fromJson(x, mark));
        return Value(o);
    }
    default:
        return Value();
    }
}

bool equals(const Value& a, const Value& b)
{
    const DepthGuard depth;
    chargeVisits(1);
    if (a.isNumber() && b.isNumber())
        return a.num() == b.num();
    if (a.isBool() && b.isBool())
        return std::get<bool>(a.v) == std::get<bool>(b.v);
    if (a.isString() && b.isString())
        return a.str().s == b.str().s;
    if ((a.isNone() || a.isUndefined()) && (b.isNone() || b.isUndefined()))
        return a.isNone() == b.isNone();
    if (a.isArray() && b.isArray()) {
        if (a.arr().size() != b.arr().size())
            return false;
        for (size_t i = 0; i < a.arr().size(); ++i)
            if (!equals(a.arr()[i], b.arr()[i]))
                return false;
        return true;
    }
    if (a.isObject() && b.isObject())
        return toJson(a) == toJson(b);
    return false;
}

Finder::Finder(std::string_view needle) : m_needle(needle) {}

size_t Finder::find(std::string_view text, size_t from) const
{
    if (from > text.size())
        return std::string::npos;
    if (m_needle.empty())
        return from;
    // glibc's memmem: the two-way algorithm (linear time, constant space) for long needles, a bounded
    // shift-table scan for short ones. std::boyer_moore_searcher's good-suffix table is built in time
    // quadratic in a repetitive needle ('a' * 4000000 + 'b'), and std::string::find compares at every position.
    const void* hit = ::memmem(text.data() + from, text.size() - from, m_needle.data(), m_needle.size());
    return hit ? static_cast<size_t>(static_cast<const char*>(hit) - text.data()) : std::string::npos;
}

} // namespace together::jinja::detail
