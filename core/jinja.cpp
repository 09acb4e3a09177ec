// SPDX-License-Identifier: MIT
// A Jinja interpreter for the subset chat templates use. Source -> tokens (lexer, with the whitespace rules)
// -> statement tree (parser) -> output (evaluator). Values are the JSON types plus Undefined, callables
// (macros, builtins, bound methods) and namespaces; strings carry an "untrusted" mark per byte.
#include "core/jinja.h"

#include "core/error.h"
#include "core/unicode.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <cmath>
#include <ctime>
#include <functional>
#include <map>
#include <sstream>
#include <variant>

namespace together::jinja {

using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------------------
// Limits. A chat template comes with a downloaded model: it is untrusted code. Like Jinja's sandbox (which
// caps range() at 100 000 items) it runs under limits that no real template comes near, each checked where
// its concern lives: nesting in the parser, recursion, loop iterations and sizes in the evaluator.

constexpr int kMaxExprDepth = 200;           // depth of an expression's tree: (((…))), a+a+…, x.y.z…
constexpr int kMaxBlockDepth = 100;          // statements nested in statements
constexpr int kMaxCallDepth = 64;            // macro calls inside macro calls
constexpr int kMaxEvalDepth = 2000;          // expression and statement evaluation on the stack at once
constexpr int64_t kMaxRange = 100000;        // items range() makes
constexpr int64_t kMaxIterations = 1000000;  // loop iterations of one render, all loops together
constexpr size_t kMaxStringBytes = 8u << 20; // any one string, the output included
constexpr int64_t kMaxBuiltBytes = int64_t{512} << 20; // string bytes one render may build in all
constexpr size_t kMaxItems = 1000000;        // items of one list

[[noreturn]] void limitError(const std::string& msg) { throw Error("chat template: " + msg); }

// What one render has used, for the limits above that span the whole render. Set by Template::render for its
// thread; null outside a render (parsing builds strings too).
class Scope;
struct RenderBudget {
    int evalDepth = 0, callDepth = 0;
    int64_t iterations = 0, builtBytes = 0;
    // The scopes macros captured: a macro stored where its own scope reaches it (ns.f = m, l.append(m)) is a
    // reference cycle; the render clears these when it ends, so nothing outlives it.
    std::vector<std::shared_ptr<Scope>> captured;
};
thread_local RenderBudget* t_budget = nullptr;

void chargeBytes(size_t n)
{
    if (t_budget && (t_budget->builtBytes += static_cast<int64_t>(n)) > kMaxBuiltBytes)
        limitError("the template built more than " + std::to_string(kMaxBuiltBytes >> 20) + " MiB of text (the limit)");
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

void chargeIterations(int64_t n)
{
    if (t_budget && (t_budget->iterations += n) > kMaxIterations)
        limitError("loops ran more than " + std::to_string(kMaxIterations) +
                   " iterations (the limit; macro calls and the comparisons of unique count too)");
}

// One level of evaluation on the stack (RAII); `call` marks a macro call.
class DepthGuard {
public:
    explicit DepthGuard(bool call = false)
        : m_call(call)
    {
        if (!t_budget)
            return;
        if (++t_budget->evalDepth > kMaxEvalDepth) {
            --t_budget->evalDepth;
            limitError("evaluation nested deeper than " + std::to_string(kMaxEvalDepth) + " levels");
        }
        if (m_call && ++t_budget->callDepth > kMaxCallDepth) {
            --t_budget->callDepth;
            --t_budget->evalDepth;
            limitError("macros called each other deeper than " + std::to_string(kMaxCallDepth) + " levels (runaway recursion?)");
        }
    }
    ~DepthGuard()
    {
        if (!t_budget)
            return;
        --t_budget->evalDepth;
        if (m_call)
            --t_budget->callDepth;
    }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

private:
    bool m_call;
};

// Integer arithmetic as Python's would give it, or an error where Python's result would not fit in 64 bits
// (signed overflow is undefined behaviour in C++, and a wrapped number a silent wrong answer).
void checkOverflow(bool overflow, int line);

// A float made an integer (range() bounds, the int filter): NaN, infinities and values beyond 64 bits are errors.
int64_t floatToInt(double d, int line);

// ---------------------------------------------------------------------------------------------------------
// Values

struct Value;
using Array = std::vector<Value>;
struct Object;
struct Callable;

struct Str {
    std::string s;
    std::vector<bool> mark; // empty: no byte untrusted; else one flag per byte
    bool anyMarked() const { return std::find(mark.begin(), mark.end(), true) != mark.end(); }
    void append(const Str& o)
    {
        checkStringSize(s.size() + o.s.size());
        chargeBytes(o.s.size());
        if (!mark.empty() || !o.mark.empty()) {
            mark.resize(s.size(), false);
            if (o.mark.empty())
                mark.resize(s.size() + o.s.size(), false);
            else
                mark.insert(mark.end(), o.mark.begin(), o.mark.end());
        }
        s += o.s;
    }
    Str sub(size_t pos, size_t len = std::string::npos) const
    {
        Str r;
        r.s = s.substr(pos, len);
        if (!mark.empty())
            r.mark.assign(mark.begin() + static_cast<long>(pos), mark.begin() + static_cast<long>(pos + r.s.size()));
        return r;
    }
    // A derived string (upper, replace, tojson...) is untrusted as a whole if any input byte was.
    static Str derived(std::string text, bool untrusted)
    {
        checkStringSize(text.size());
        chargeBytes(text.size());
        Str r;
        r.s = std::move(text);
        if (untrusted)
            r.mark.assign(r.s.size(), true);
        return r;
    }
};

struct Undefined {};
struct None {};

struct Value {
    std::variant<Undefined, None, bool, int64_t, double, Str, std::shared_ptr<Array>, std::shared_ptr<Object>,
                 std::shared_ptr<Callable>>
        v;
    Value()
        : v(Undefined{})
    {
    }
    template <class T>
    Value(T x)
        : v(std::move(x))
    {
    }
    Value(const char* s)
        : v(Str{s, {}})
    {
    }
    Value(std::string s)
        : v(Str{std::move(s), {}})
    {
    }
    Value(int x)
        : v(static_cast<int64_t>(x))
    {
    }
    Value(size_t x)
        : v(static_cast<int64_t>(x))
    {
    }

    bool isUndefined() const { return std::holds_alternative<Undefined>(v); }
    bool isNone() const { return std::holds_alternative<None>(v); }
    bool isBool() const { return std::holds_alternative<bool>(v); }
    bool isInt() const { return std::holds_alternative<int64_t>(v); }
    bool isFloat() const { return std::holds_alternative<double>(v); }
    bool isNumber() const { return isInt() || isFloat(); }
    bool isString() const { return std::holds_alternative<Str>(v); }
    bool isArray() const { return std::holds_alternative<std::shared_ptr<Array>>(v); }
    bool isObject() const { return std::holds_alternative<std::shared_ptr<Object>>(v); }
    bool isCallable() const { return std::holds_alternative<std::shared_ptr<Callable>>(v); }
    const Str& str() const { return std::get<Str>(v); }
    Array& arr() const { return *std::get<std::shared_ptr<Array>>(v); }
    Object& obj() const { return *std::get<std::shared_ptr<Object>>(v); }
    Callable& fn() const { return *std::get<std::shared_ptr<Callable>>(v); }
    double num() const { return isInt() ? static_cast<double>(std::get<int64_t>(v)) : std::get<double>(v); }
    int64_t integer() const { return std::get<int64_t>(v); }
};

struct Object {
    std::vector<std::pair<std::string, Value>> items; // insertion order, as Python dicts keep it
    bool isNamespace = false;
    Value* find(const std::string& k)
    {
        for (auto& [key, val] : items)
            if (key == k)
                return &val;
        return nullptr;
    }
    void set(const std::string& k, Value v)
    {
        if (auto* p = find(k))
            *p = std::move(v);
        else
            items.emplace_back(k, std::move(v));
    }
};

struct Args {
    std::vector<Value> positional;
    std::vector<std::pair<std::string, Value>> keyword;
    const Value* kw(const std::string& name) const
    {
        for (auto& [k, v] : keyword)
            if (k == name)
                return &v;
        return nullptr;
    }
    // positional i, else keyword `name`, else nullptr
    const Value* get(size_t i, const std::string& name) const
    {
        if (i < positional.size())
            return &positional[i];
        return kw(name);
    }
};

struct Callable {
    std::function<Value(const Args&)> call;
};

Value makeArray(Array a = {})
{
    checkItems(a.size());
    return Value(std::make_shared<Array>(std::move(a)));
}
Value makeObject() { return Value(std::make_shared<Object>()); }
Value makeFn(std::function<Value(const Args&)> f) { return Value(std::make_shared<Callable>(Callable{std::move(f)})); }

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

std::string pyRepr(const Value& v, bool quoteStrings)
{
    if (v.isUndefined())
        return "";
    if (v.isNone())
        return "None";
    if (v.isBool())
        return std::get<bool>(v.v) ? "True" : "False";
    if (v.isInt())
        return std::to_string(v.integer());
    if (v.isFloat())
        return formatFloat(v.num());
    if (v.isString()) {
        if (!quoteStrings)
            return v.str().s;
        std::string q = v.str().s.find('\'') != std::string::npos && v.str().s.find('"') == std::string::npos ? "\"" : "'";
        std::string out = q;
        for (char c : v.str().s) {
            if (c == '\\')
                out += "\\\\";
            else if (c == '\n')
                out += "\\n";
            else if (c == std::string(q)[0])
                out += std::string("\\") + c;
            else
                out += c;
        }
        return out + q;
    }
    if (v.isArray()) {
        std::string out = "[";
        bool first = true;
        for (auto& x : v.arr()) {
            out += (first ? "" : ", ") + pyRepr(x, true);
            first = false;
        }
        return out + "]";
    }
    if (v.isObject()) {
        std::string out = "{";
        bool first = true;
        for (auto& [k, x] : v.obj().items) {
            out += (first ? "'" : ", '") + k + "': " + pyRepr(x, true);
            first = false;
        }
        return out + "}";
    }
    return "<function>";
}

Str toStr(const Value& v)
{
    if (v.isString())
        return v.str();
    return Str::derived(pyRepr(v, false), isMarked(v));
}

bool isMarked(const Value& v)
{
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

json toJson(const Value& v)
{
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
            a.push_back(toJson(x));
        return a;
    }
    if (v.isObject()) {
        json o = json::object();
        for (auto& [k, x] : v.obj().items)
            o[k] = toJson(x);
        return o;
    }
    return nullptr;
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

// ---------------------------------------------------------------------------------------------------------
// Lexer

enum class Tok {
    Name,
    String,
    Int,
    Float,
    Op,
    End,
};

struct Token {
    Tok type;
    std::string text;
    int line;
};

struct Segment {
    enum Kind {
        Text,
        Expr,
        Stmt,
    } kind;
    std::string text;          // Text
    std::vector<Token> tokens; // Expr / Stmt
    int line;
};

[[noreturn]] void syntaxError(int line, const std::string& msg)
{
    throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

std::vector<Token> lexExpression(const std::string& src, int line)
{
    std::vector<Token> out;
    size_t i = 0;
    while (i < src.size()) {
        char c = src[i];
        if (c == '\n') {
            ++line;
            ++i;
            continue;
        }
        if (std::isspace(static_cast<unsigned char>(c))) {
            ++i;
            continue;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i;
            while (j < src.size() && (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_'))
                ++j;
            out.push_back({Tok::Name, src.substr(i, j - i), line});
            i = j;
            continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t j = i;
            bool isFloat = false;
            while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) || src[j] == '_'))
                ++j;
            if (j + 1 < src.size() && src[j] == '.' && std::isdigit(static_cast<unsigned char>(src[j + 1]))) {
                isFloat = true;
                ++j;
                while (j < src.size() && std::isdigit(static_cast<unsigned char>(src[j])))
                    ++j;
            }
            std::string num = src.substr(i, j - i);
            num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
            out.push_back({isFloat ? Tok::Float : Tok::Int, num, line});
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            std::string s;
            size_t j = i + 1;
            while (j < src.size() && src[j] != c) {
                if (src[j] == '\\' && j + 1 < src.size()) {
                    char e = src[j + 1];
                    switch (e) {
                    case 'n':
                        s += '\n';
                        break;
                    case 't':
                        s += '\t';
                        break;
                    case 'r':
                        s += '\r';
                        break;
                    case '\\':
                        s += '\\';
                        break;
                    case '\'':
                        s += '\'';
                        break;
                    case '"':
                        s += '"';
                        break;
                    default:
                        s += '\\';
                        s += e;
                    }
                    j += 2;
                    continue;
                }
                if (src[j] == '\n')
                    ++line;
                s += src[j++];
            }
            if (j >= src.size())
                syntaxError(line, "unterminated string literal");
            out.push_back({Tok::String, s, line});
            i = j + 1;
            continue;
        }
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                    "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="};
        bool matched = false;
        for (const char* op : ops) {
            size_t n = std::strlen(op);
            if (src.compare(i, n, op) == 0) {
                out.push_back({Tok::Op, op, line});
                i += n;
                matched = true;
                break;
            }
        }
        if (!matched)
            syntaxError(line, std::string("unexpected character '") + c + "'");
    }
    out.push_back({Tok::End, "", line});
    return out;
}

// Splits the source into text and tags, applying whitespace control ({%- -%}) and HF's environment settings:
// trim_blocks (drop the newline after a block or comment tag) and lstrip_blocks (drop spaces and tabs before
// a block or comment tag at the start of a line).
std::vector<Segment> lex(const std::string& src)
{
    std::vector<Segment> segs;
    size_t i = 0;
    int line = 1;
    bool trimNextNewline = false;  // trim_blocks
    bool stripNextLeading = false; // "-%}" / "-}}"
    while (i <= src.size()) {
        size_t open = src.find('{', i);
        while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
               src[open + 1] != '#')
            open = src.find('{', open + 1);
        if (open != std::string::npos && open + 1 >= src.size())
            open = std::string::npos;
        std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
        char kind = open == std::string::npos ? 0 : src[open + 1];
        bool leftTrim = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '-';
        bool leftKeep = open != std::string::npos && open + 2 < src.size() && src[open + 2] == '+';
        if (trimNextNewline && !text.empty()) {
            if (text[0] == '\n')
                text.erase(0, 1);
            else if (text.size() > 1 && text[0] == '\r' && text[1] == '\n')
                text.erase(0, 2);
        }
        if (stripNextLeading) {
            size_t k = 0;
            while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k])))
                ++k;
            text.erase(0, k);
        }
        if (leftTrim) {
            while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
                text.pop_back();
        } else if ((kind == '%' || kind == '#') && !leftKeep) {
            // lstrip_blocks: only when nothing but spaces/tabs stands between the line start and the tag
            std::string original = src.substr(i, open - i);
            size_t nl = original.rfind('\n');
            size_t k = nl == std::string::npos ? 0 : nl + 1;
            bool onlyBlanks = original.find_first_not_of(" \t", k) == std::string::npos;
            bool atLineStart = nl != std::string::npos || i == 0 || src[i - 1] == '\n';
            if (onlyBlanks && atLineStart)
                while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
                    text.pop_back();
        }
        int textLine = line;
        line += static_cast<int>(std::count(src.begin() + static_cast<long>(i),
                                            open == std::string::npos ? src.end() : src.begin() + static_cast<long>(open), '\n'));
        if (!text.empty())
            segs.push_back({Segment::Text, text, {}, textLine});
        if (open == std::string::npos)
            break;
        std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        size_t bodyStart = open + 2 + ((leftTrim || leftKeep) ? 1 : 0);
        size_t end = src.find(close, bodyStart);
        if (end == std::string::npos)
            syntaxError(line, std::string("unclosed '{") + kind + "'");
        std::string body = src.substr(bodyStart, end - bodyStart);
        bool rightTrim = !body.empty() && body.back() == '-';
        if (rightTrim || (!body.empty() && body.back() == '+'))
            body.pop_back();
        int tagLine = line;
        line += static_cast<int>(std::count(body.begin(), body.end(), '\n'));
        if (kind == '{')
            segs.push_back({Segment::Expr, {}, lexExpression(body, tagLine), tagLine});
        else if (kind == '%')
            segs.push_back({Segment::Stmt, {}, lexExpression(body, tagLine), tagLine});
        trimNextNewline = kind != '{';
        stripNextLeading = rightTrim;
        i = end + 2;
    }
    return segs;
}

// ---------------------------------------------------------------------------------------------------------
// AST

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum Kind {
        Literal,
        Var,
        ListLit,
        DictLit,
        Attr,
        Index,
        Slice,
        Call,
        Filter,
        Test,
        Unary,
        Binary,
        Ternary,
    } kind;
    int line = 0;
    Value literal;
    std::string name;            // Var, Attr, Filter, Test, Unary/Binary operator
    std::vector<ExprPtr> kids;   // operands / list items / dict keys+values alternating / slice parts (may be null)
    std::vector<ExprPtr> args;   // call/filter/test positional args
    std::vector<std::pair<std::string, ExprPtr>> kwargs;
    bool negate = false;         // Test: "is not"
    int depth = 1;               // of the tree below, this node included (bounded by kMaxExprDepth)
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
    enum Kind {
        Text,
        Output,
        If,
        For,
        Set,
        SetBlock,
        Macro,
        Break,
        Continue,
        CallBlock,
    } kind;
    int line = 0;
    std::string text;
    ExprPtr expr;                          // Output value, If condition (per branch below), For iterable, Set value
    std::vector<std::pair<ExprPtr, Body>> branches; // If: (cond|null for else, body)
    std::vector<std::string> targets;      // For loop vars / Set names
    std::string attrTarget;                // Set ns.attr
    ExprPtr filterCond;                    // For ... if cond
    Body body, elseBody;
    std::vector<std::pair<std::string, ExprPtr>> params; // Macro params with defaults
};

// ---------------------------------------------------------------------------------------------------------
// Parser

class ExprParser {
public:
    ExprParser(const std::vector<Token>& toks, size_t start = 0)
        : m_t(toks)
        , m_i(start)
    {
    }
    size_t pos() const { return m_i; }
    const Token& peek(size_t k = 0) const { return m_t[std::min(m_i + k, m_t.size() - 1)]; }
    bool atEnd() const { return peek().type == Tok::End; }
    bool isOp(const char* op, size_t k = 0) const { return peek(k).type == Tok::Op && peek(k).text == op; }
    bool isName(const char* n, size_t k = 0) const { return peek(k).type == Tok::Name && peek(k).text == n; }
    Token next() { return m_t[std::min(m_i++, m_t.size() - 1)]; }
    void expectOp(const char* op)
    {
        if (!isOp(op))
            syntaxError(peek().line, std::string("expected '") + op + "' but found '" + peek().text + "'");
        ++m_i;
    }
    std::string expectName()
    {
        if (peek().type != Tok::Name)
            syntaxError(peek().line, "expected a name but found '" + peek().text + "'");
        return next().text;
    }
    void expectEnd()
    {
        if (!atEnd())
            syntaxError(peek().line, "unexpected '" + peek().text + "'");
    }

    ExprPtr parseExpression(bool allowTernary = true)
    {
        const Nesting guard(*this);
        ExprPtr e = parseOr();
        if (allowTernary && isName("if")) {
            int line = next().line;
            ExprPtr cond = parseOr();
            ExprPtr otherwise;
            if (isName("else")) {
                next();
                otherwise = parseExpression();
            }
            auto t = mk(Expr::Ternary, line);
            t->kids.push_back(std::move(cond));
            t->kids.push_back(std::move(e));
            t->kids.push_back(std::move(otherwise));
            return sealed(std::move(t));
        }
        return e;
    }
    // Tuple without parentheses (for `set a, b = ...` values and `for` iterables is not needed); used for
    // expressions separated by commas in brackets.

private:
    // The parser recurses for parentheses, brackets, calls and unary operators: bounded, so a template of
    // 100 000 '(' is an error, not a stack overflow.
    struct Nesting {
        explicit Nesting(ExprParser& p)
            : m_p(p)
        {
            if (++m_p.m_nesting > kMaxExprDepth)
                syntaxError(m_p.peek().line, "expression nested deeper than " + std::to_string(kMaxExprDepth) + " levels");
        }
        ~Nesting() { --m_p.m_nesting; }
        Nesting(const Nesting&) = delete;
        Nesting& operator=(const Nesting&) = delete;
        ExprParser& m_p;
    };
    // A finished node: its depth is one more than its deepest child's. Chains the parser builds in loops
    // (a+a+…, x.y.z…, f|g|h…) grow the tree without recursing, and evaluating or freeing a tree recurses over
    // its depth, so the depth is bounded here too.
    static ExprPtr sealed(ExprPtr e)
    {
        int d = 0;
        for (auto& k : e->kids)
            if (k)
                d = std::max(d, k->depth);
        for (auto& k : e->args)
            d = std::max(d, k->depth);
        for (auto& kv : e->kwargs)
            d = std::max(d, kv.second->depth);
        e->depth = d + 1;
        if (e->depth > kMaxExprDepth)
            syntaxError(e->line, "expression nested deeper than " + std::to_string(kMaxExprDepth) + " levels");
        return e;
    }
    static ExprPtr mk(Expr::Kind k, int line)
    {
        auto e = std::make_unique<Expr>();
        e->kind = k;
        e->line = line;
        return e;
    }
    ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b, int line)
    {
        auto e = mk(Expr::Binary, line);
        e->name = op;
        e->kids.push_back(std::move(a));
        e->kids.push_back(std::move(b));
        return sealed(std::move(e));
    }
    ExprPtr parseOr()
    {
        ExprPtr e = parseAnd();
        while (isName("or")) {
            int line = next().line;
            e = binary("or", std::move(e), parseAnd(), line);
        }
        return e;
    }
    ExprPtr parseAnd()
    {
        ExprPtr e = parseNot();
        while (isName("and")) {
            int line = next().line;
            e = binary("and", std::move(e), parseNot(), line);
        }
        return e;
    }
    ExprPtr parseNot()
    {
        if (isName("not")) {
            const Nesting guard(*this);
            int line = next().line;
            auto e = mk(Expr::Unary, line);
            e->name = "not";
            e->kids.push_back(parseNot());
            return sealed(std::move(e));
        }
        return parseCompare();
    }
    ExprPtr parseCompare()
    {
        ExprPtr e = parseConcat();
        while (true) {
            int line = peek().line;
            if (peek().type == Tok::Op &&
                (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
                 peek().text == "<=" || peek().text == ">=")) {
                std::string op = next().text;
                e = binary(op, std::move(e), parseConcat(), line);
            } else if (isName("in")) {
                next();
                e = binary("in", std::move(e), parseConcat(), line);
            } else if (isName("not") && isName("in", 1)) {
                next();
                next();
                e = binary("not in", std::move(e), parseConcat(), line);
            } else {
                return e;
            }
        }
    }
    ExprPtr parseConcat()
    {
        ExprPtr e = parseAdd();
        while (isOp("~")) {
            int line = next().line;
            e = binary("~", std::move(e), parseAdd(), line);
        }
        return e;
    }
    ExprPtr parseAdd()
    {
        ExprPtr e = parseMul();
        while (isOp("+") || isOp("-")) {
            Token t = next();
            e = binary(t.text, std::move(e), parseMul(), t.line);
        }
        return e;
    }
    ExprPtr parseMul()
    {
        ExprPtr e = parsePow();
        while (isOp("*") || isOp("/") || isOp("//") || isOp("%")) {
            Token t = next();
            e = binary(t.text, std::move(e), parsePow(), t.line);
        }
        return e;
    }
    ExprPtr parsePow()
    {
        ExprPtr e = parseUnary();
        while (isOp("**")) {
            int line = next().line;
            e = binary("**", std::move(e), parseUnary(), line);
        }
        return e;
    }
    ExprPtr parseUnary()
    {
        if (isOp("-") || isOp("+")) {
            const Nesting guard(*this);
            Token t = next();
            auto e = mk(Expr::Unary, t.line);
            e->name = t.text;
            e->kids.push_back(parseUnary());
            return sealed(std::move(e));
        }
        return parsePostfix(parsePrimary());
    }
    void parseCallArgs(std::vector<ExprPtr>& args, std::vector<std::pair<std::string, ExprPtr>>& kwargs)
    {
        expectOp("(");
        while (!isOp(")")) {
            if (peek().type == Tok::Name && isOp("=", 1)) {
                std::string k = next().text;
                next();
                kwargs.emplace_back(k, parseExpression());
            } else {
                args.push_back(parseExpression());
            }
            if (!isOp(")"))
                expectOp(",");
        }
        expectOp(")");
    }
    ExprPtr parsePostfix(ExprPtr e)
    {
        while (true) {
            int line = peek().line;
            if (isOp(".")) {
                next();
                auto a = mk(Expr::Attr, line);
                if (peek().type == Tok::Int)
                    a->name = next().text;
                else
                    a->name = expectName();
                a->kids.push_back(std::move(e));
                e = sealed(std::move(a));
            } else if (isOp("[")) {
                next();
                ExprPtr parts[3];
                bool isSlice = false;
                for (int k = 0; k < 3; ++k) {
                    if (!isOp(":") && !isOp("]"))
                        parts[k] = parseExpression();
                    if (isOp(":") && k < 2) {
                        next();
                        isSlice = true;
                    } else {
                        break;
                    }
                }
                expectOp("]");
                auto s = mk(isSlice ? Expr::Slice : Expr::Index, line);
                s->kids.push_back(std::move(e));
                if (isSlice) {
                    for (auto& p : parts)
                        s->kids.push_back(std::move(p));
                } else {
                    if (!parts[0])
                        syntaxError(line, "empty subscript");
                    s->kids.push_back(std::move(parts[0]));
                }
                e = sealed(std::move(s));
            } else if (isOp("(")) {
                auto c = mk(Expr::Call, line);
                c->kids.push_back(std::move(e));
                parseCallArgs(c->args, c->kwargs);
                e = sealed(std::move(c));
            } else if (isOp("|")) {
                next();
                auto f = mk(Expr::Filter, line);
                f->name = expectName();
                while (isOp(".")) { // dotted filter names are not used; keep the grammar strict
                    syntaxError(line, "unexpected '.' after filter name");
                }
                f->kids.push_back(std::move(e));
                if (isOp("("))
                    parseCallArgs(f->args, f->kwargs);
                e = sealed(std::move(f));
            } else if (isName("is")) {
                next();
                auto t = mk(Expr::Test, line);
                if (isName("not")) {
                    next();
                    t->negate = true;
                }
                t->name = expectName();
                t->kids.push_back(std::move(e));
                if (isOp("(")) {
                    parseCallArgs(t->args, t->kwargs);
                } else if (peek().type == Tok::String || peek().type == Tok::Int || peek().type == Tok::Float ||
                           (peek().type == Tok::Name && !isName("and") && !isName("or") && !isName("else") &&
                            !isName("if") && !isName("in") && !isName("not") && !isName("is"))) {
                    t->args.push_back(parsePrimary()); // `is divisibleby 3`, `is equalto x`
                }
                e = sealed(std::move(t));
            } else {
                return e;
            }
        }
    }
    ExprPtr parsePrimary()
    {
        Token t = next();
        switch (t.type) {
        case Tok::String: {
            auto e = mk(Expr::Literal, t.line);
            std::string s = t.text;
            while (peek().type == Tok::String) // adjacent literals concatenate
                s += next().text;
            e->literal = Value(s);
            return e;
        }
        case Tok::Int: {
            auto e = mk(Expr::Literal, t.line);
            errno = 0;
            const long long v = std::strtoll(t.text.c_str(), nullptr, 10);
            if (errno == ERANGE)
                syntaxError(t.line, "integer " + t.text + " does not fit in 64 bits");
            e->literal = Value(static_cast<int64_t>(v));
            return e;
        }
        case Tok::Float: {
            auto e = mk(Expr::Literal, t.line);
            e->literal = Value(std::strtod(t.text.c_str(), nullptr)); // too large: inf, as Python's float()
            return e;
        }
        case Tok::Name: {
            auto e = mk(Expr::Literal, t.line);
            if (t.text == "true" || t.text == "True")
                e->literal = Value(true);
            else if (t.text == "false" || t.text == "False")
                e->literal = Value(false);
            else if (t.text == "none" || t.text == "None")
                e->literal = Value(None{});
            else {
                e->kind = Expr::Var;
                e->name = t.text;
            }
            return e;
        }
        case Tok::Op:
            if (t.text == "(") {
                ExprPtr inner = parseExpression();
                if (isOp(",")) { // tuple
                    auto l = mk(Expr::ListLit, t.line);
                    l->kids.push_back(std::move(inner));
                    while (isOp(",")) {
                        next();
                        if (isOp(")"))
                            break;
                        l->kids.push_back(parseExpression());
                    }
                    expectOp(")");
                    return sealed(std::move(l));
                }
                expectOp(")");
                return inner;
            }
            if (t.text == "[") {
                auto l = mk(Expr::ListLit, t.line);
                while (!isOp("]")) {
                    l->kids.push_back(parseExpression());
                    if (!isOp("]"))
                        expectOp(",");
                }
                expectOp("]");
                return sealed(std::move(l));
            }
            if (t.text == "{") {
                auto d = mk(Expr::DictLit, t.line);
                while (!isOp("}")) {
                    d->kids.push_back(parseExpression());
                    expectOp(":");
                    d->kids.push_back(parseExpression());
                    if (!isOp("}"))
                        expectOp(",");
                }
                expectOp("}");
                return sealed(std::move(d));
            }
            break;
        case Tok::End:
            syntaxError(t.line, "unexpected end of expression");
        }
        syntaxError(t.line, "unexpected '" + t.text + "'");
    }

    const std::vector<Token>& m_t;
    size_t m_i;
    int m_nesting = 0;
};

class TemplateParser {
public:
    explicit TemplateParser(std::vector<Segment> segs)
        : m_segs(std::move(segs))
    {
    }

    Body parseAll()
    {
        Body b = parseBody({});
        if (m_i < m_segs.size())
            syntaxError(m_segs[m_i].line, "unexpected '" + firstWord(m_segs[m_i]) + "'");
        return b;
    }

private:
    static std::string firstWord(const Segment& s) { return s.tokens.empty() ? "" : s.tokens[0].text; }

    // Parses until a statement whose first word is one of `stops` (left unconsumed).
    Body parseBody(const std::vector<std::string>& stops)
    {
        Body body;
        while (m_i < m_segs.size()) {
            Segment& s = m_segs[m_i];
            if (s.kind == Segment::Text) {
                auto n = std::make_unique<Node>();
                n->kind = Node::Text;
                n->text = s.text;
                body.push_back(std::move(n));
                ++m_i;
                continue;
            }
            if (s.kind == Segment::Expr) {
                ExprParser p(s.tokens);
                auto n = std::make_unique<Node>();
                n->kind = Node::Output;
                n->line = s.line;
                n->expr = p.parseExpression();
                p.expectEnd();
                body.push_back(std::move(n));
                ++m_i;
                continue;
            }
            std::string w = firstWord(s);
            if (std::find(stops.begin(), stops.end(), w) != stops.end())
                return body;
            body.push_back(parseStatement());
        }
        if (!stops.empty())
            syntaxError(m_segs.empty() ? 0 : m_segs.back().line, "missing '{% " + stops.back() + " %}'");
        return body;
    }

    NodePtr parseStatement()
    {
        Segment& s = m_segs[m_i++];
        // Blocks recurse (if inside for inside macro…): bounded like expressions.
        struct Depth {
            int& d;
            ~Depth() { --d; }
        } depth{++m_depth};
        if (m_depth > kMaxBlockDepth)
            syntaxError(s.line, "statements nested deeper than " + std::to_string(kMaxBlockDepth) + " levels");
        ExprParser p(s.tokens);
        std::string w = p.expectName();
        auto n = std::make_unique<Node>();
        n->line = s.line;
        if (w == "if") {
            n->kind = Node::If;
            ExprPtr cond = p.parseExpression();
            p.expectEnd();
            Body b = parseBody({"elif", "else", "endif"});
            n->branches.emplace_back(std::move(cond), std::move(b));
            while (true) {
                Segment& t = m_segs[m_i++];
                ExprParser q(t.tokens);
                std::string k = q.expectName();
                if (k == "elif") {
                    ExprPtr c = q.parseExpression();
                    q.expectEnd();
                    Body bb = parseBody({"elif", "else", "endif"});
                    n->branches.emplace_back(std::move(c), std::move(bb));
                } else if (k == "else") {
                    q.expectEnd();
                    Body bb = parseBody({"endif"});
                    n->branches.emplace_back(nullptr, std::move(bb));
                } else {
                    break;
                }
            }
        } else if (w == "for") {
            n->kind = Node::For;
            n->targets.push_back(p.expectName());
            while (p.isOp(",")) {
                p.next();
                n->targets.push_back(p.expectName());
            }
            if (!p.isName("in"))
                syntaxError(s.line, "expected 'in' in for loop");
            p.next();
            n->expr = p.parseExpression(false);
            if (p.isName("if")) {
                p.next();
                n->filterCond = p.parseExpression(false);
            }
            if (p.isName("recursive"))
                syntaxError(s.line, "recursive loops are not supported");
            p.expectEnd();
            n->body = parseBody({"else", "endfor"});
            Segment& t = m_segs[m_i++];
            if (firstWord(t) == "else") {
                n->elseBody = parseBody({"endfor"});
                ++m_i;
            }
        } else if (w == "set") {
            std::string name = p.expectName();
            if (p.isOp(".")) {
                p.next();
                n->attrTarget = p.expectName();
            }
            n->targets.push_back(name);
            while (p.isOp(",")) {
                p.next();
                n->targets.push_back(p.expectName());
            }
            if (p.isOp("=")) {
                p.next();
                n->kind = Node::Set;
                n->expr = p.parseExpression();
                p.expectEnd();
            } else {
                p.expectEnd();
                n->kind = Node::SetBlock;
                n->body = parseBody({"endset"});
                ++m_i;
            }
        } else if (w == "macro") {
            n->kind = Node::Macro;
            n->targets.push_back(p.expectName());
            p.expectOp("(");
            while (!p.isOp(")")) {
                std::string param = p.expectName();
                ExprPtr def;
                if (p.isOp("=")) {
                    p.next();
                    def = p.parseExpression();
                }
                n->params.emplace_back(param, std::move(def));
                if (!p.isOp(")"))
                    p.expectOp(",");
            }
            p.expectOp(")");
            p.expectEnd();
            n->body = parseBody({"endmacro"});
            ++m_i;
        } else if (w == "break" || w == "continue") {
            n->kind = w == "break" ? Node::Break : Node::Continue;
            p.expectEnd();
        } else if (w == "generation") {
            // transformers' AssistantTracker extension: renders its body unchanged
            n->kind = Node::CallBlock;
            p.expectEnd();
            n->body = parseBody({"endgeneration"});
            ++m_i;
        } else {
            syntaxError(s.line, "unknown statement '" + w + "'");
        }
        return n;
    }

    std::vector<Segment> m_segs;
    size_t m_i = 0;
    int m_depth = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Evaluator

struct BreakSignal {};
struct ContinueSignal {};

class Scope {
public:
    explicit Scope(Scope* parent = nullptr)
        : m_parent(parent)
    {
    }
    Value lookup(const std::string& name) const
    {
        for (const Scope* s = this; s; s = s->m_parent)
            if (auto it = s->m_vars.find(name); it != s->m_vars.end())
                return it->second;
        return Value();
    }
    void set(const std::string& name, Value v) { m_vars[name] = std::move(v); }
    void clear() { m_vars.clear(); }
    // Everything visible from here, as a parentless scope that owns it: what a macro keeps, because the
    // scope it was defined in (a loop body, say) may be gone when a namespace hands the macro out later.
    std::shared_ptr<Scope> snapshot() const
    {
        auto out = std::make_shared<Scope>();
        std::vector<const Scope*> chain;
        for (const Scope* s = this; s; s = s->m_parent)
            chain.push_back(s);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it)
            for (auto& [k, v] : (*it)->m_vars)
                out->m_vars[k] = v;
        return out;
    }

private:
    Scope* m_parent;
    std::map<std::string, Value> m_vars;
};

[[noreturn]] void runtimeError(int line, const std::string& msg)
{
    throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

void checkOverflow(bool overflow, int line)
{
    if (overflow)
        runtimeError(line, "integer result does not fit in 64 bits");
}

int64_t floatToInt(double d, int line)
{
    // 2^63 is exactly representable; anything at or beyond it (or NaN) has no int64_t.
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        runtimeError(line, "number " + formatFloat(d) + " cannot be made an integer");
    return static_cast<int64_t>(d);
}

class Evaluator {
public:
    explicit Evaluator(Str& out)
        : m_out(out)
    {
    }

    void exec(const Body& body, Scope& scope)
    {
        for (auto& n : body)
            execNode(*n, scope);
    }

    Value eval(const Expr& e, Scope& scope);

private:
    void execNode(const Node& n, Scope& scope);
    Value callFilter(const Expr& e, Scope& scope);
    Value runTest(const Expr& e, Scope& scope);
    Value getAttr(const Value& obj, const std::string& name, int line);
    Value getIndex(const Value& obj, const Value& key, int line);
    Args evalArgs(const Expr& e, Scope& scope)
    {
        Args a;
        for (auto& x : e.args)
            a.positional.push_back(eval(*x, scope));
        for (auto& [k, x] : e.kwargs)
            a.keyword.emplace_back(k, eval(*x, scope));
        return a;
    }

    Str& m_out;
};

Array iterate(const Value& v, int line)
{
    if (v.isArray())
        return v.arr();
    if (v.isObject()) {
        Array keys;
        for (auto& [k, x] : v.obj().items)
            keys.push_back(Value(k));
        return keys;
    }
    if (v.isString()) {
        Array chars;
        for (auto& c : unicode::splitCodepoints(v.str().s))
            chars.push_back(Str::derived(c, v.str().anyMarked()));
        return chars;
    }
    if (v.isUndefined() || v.isNone())
        return {};
    runtimeError(line, "value is not iterable");
}

std::string trimChars(const std::string& s, const std::string& chars, bool left, bool right, size_t* startOut)
{
    auto isStrip = [&](char c) {
        return chars.empty() ? std::isspace(static_cast<unsigned char>(c)) != 0 : chars.find(c) != std::string::npos;
    };
    size_t b = 0, e = s.size();
    if (left)
        while (b < e && isStrip(s[b]))
            ++b;
    if (right)
        while (e > b && isStrip(s[e - 1]))
            --e;
    *startOut = b;
    return s.substr(b, e - b);
}

Str stripStr(const Str& s, const std::string& chars, bool left, bool right)
{
    size_t start = 0;
    std::string t = trimChars(s.s, chars, left, right, &start);
    return s.sub(start, t.size());
}

std::string asciiCase(std::string s, int mode) // 0 lower, 1 upper, 2 title, 3 capitalize
{
    bool startWord = true;
    for (size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (mode == 0)
            s[i] = static_cast<char>(std::tolower(c));
        else if (mode == 1)
            s[i] = static_cast<char>(std::toupper(c));
        else if (mode == 2) {
            s[i] = static_cast<char>(startWord ? std::toupper(c) : std::tolower(c));
            startWord = !std::isalnum(c);
        } else {
            s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
        }
    }
    return s;
}

Value stringMethod(const Value& self, const std::string& name, int line)
{
    const Str s = self.str();
    const bool marked = s.anyMarked();
    auto strArg = [line](const Args& a, size_t i, const std::string& kw) -> std::string {
        const Value* v = a.get(i, kw);
        if (!v || v->isNone() || v->isUndefined())
            return {};
        if (!v->isString())
            runtimeError(line, "string method argument must be a string");
        return v->str().s;
    };
    if (name == "startswith" || name == "endswith") {
        bool starts = name == "startswith";
        return makeFn([s, starts, line](const Args& a) -> Value {
            const Value* p = a.get(0, "prefix");
            if (!p)
                runtimeError(line, "startswith/endswith need an argument");
            std::vector<std::string> options;
            if (p->isArray())
                for (auto& x : p->arr())
                    options.push_back(toStr(x).s);
            else
                options.push_back(toStr(*p).s);
            for (auto& o : options) {
                if (o.size() > s.s.size())
                    continue;
                if (starts ? s.s.compare(0, o.size(), o) == 0 : s.s.compare(s.s.size() - o.size(), o.size(), o) == 0)
                    return Value(true);
            }
            return Value(false);
        });
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        bool l = name != "rstrip", r = name != "lstrip";
        return makeFn([s, l, r, strArg](const Args& a) -> Value { return Value(stripStr(s, strArg(a, 0, "chars"), l, r)); });
    }
    if (name == "split") {
        return makeFn([s, strArg, line](const Args& a) -> Value {
            std::string sep = strArg(a, 0, "sep");
            const Value* mv = a.get(1, "maxsplit");
            int64_t maxsplit = mv && mv->isInt() ? mv->integer() : -1;
            Array parts;
            if (sep.empty()) { // whitespace split, dropping empties
                size_t i = 0;
                while (i < s.s.size()) {
                    while (i < s.s.size() && std::isspace(static_cast<unsigned char>(s.s[i])))
                        ++i;
                    if (i >= s.s.size())
                        break;
                    size_t j = i;
                    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
                        size_t start = 0;
                        std::string rest = trimChars(s.s.substr(i), "", false, true, &start);
                        parts.push_back(Value(s.sub(i, rest.size())));
                        break;
                    }
                    while (j < s.s.size() && !std::isspace(static_cast<unsigned char>(s.s[j])))
                        ++j;
                    parts.push_back(Value(s.sub(i, j - i)));
                    i = j;
                }
                return makeArray(std::move(parts));
            }
            size_t prev = 0, pos;
            while ((pos = s.s.find(sep, prev)) != std::string::npos &&
                   (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit)) {
                parts.push_back(Value(s.sub(prev, pos - prev)));
                prev = pos + sep.size();
            }
            parts.push_back(Value(s.sub(prev)));
            return makeArray(std::move(parts));
        });
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        int mode = name == "lower" ? 0 : name == "upper" ? 1 : name == "title" ? 2 : 3;
        return makeFn([s, mode](const Args&) -> Value {
            Str r = s;
            r.s = asciiCase(s.s, mode); // ASCII case mapping keeps byte positions, so marks stay aligned
            return Value(r);
        });
    }
    if (name == "replace") {
        return makeFn([s, marked, strArg, line](const Args& a) -> Value {
            std::string from = strArg(a, 0, "old"), to = strArg(a, 1, "new");
            const Value* cv = a.get(2, "count");
            int64_t count = cv && cv->isInt() ? cv->integer() : -1;
            Str out;
            size_t prev = 0, pos;
            int64_t done = 0;
            if (from.empty())
                return Value(s);
            while ((count < 0 || done < count) && (pos = s.s.find(from, prev)) != std::string::npos) {
                out.append(s.sub(prev, pos - prev));
                out.append(Str::derived(to, marked));
                prev = pos + from.size();
                ++done;
            }
            out.append(s.sub(prev));
            return Value(out);
        });
    }
    if (name == "find" || name == "count") {
        bool isFind = name == "find";
        return makeFn([s, strArg, isFind](const Args& a) -> Value {
            std::string needle = strArg(a, 0, "sub");
            if (isFind) {
                size_t p = s.s.find(needle);
                return Value(p == std::string::npos ? int64_t(-1) : static_cast<int64_t>(p));
            }
            if (needle.empty())
                return Value(static_cast<int64_t>(s.s.size() + 1));
            int64_t n = 0;
            for (size_t p = s.s.find(needle); p != std::string::npos; p = s.s.find(needle, p + needle.size()))
                ++n;
            return Value(n);
        });
    }
    if (name == "join") {
        return makeFn([s, line](const Args& a) -> Value {
            if (a.positional.empty())
                runtimeError(line, "join needs an iterable");
            Str out;
            bool first = true;
            for (auto& x : iterate(a.positional[0], line)) {
                if (!first)
                    out.append(s);
                first = false;
                out.append(toStr(x));
            }
            return Value(out);
        });
    }
    if (name == "format") {
        return makeFn([s, marked](const Args& a) -> Value {
            std::string out;
            size_t ai = 0;
            bool m = marked;
            for (size_t i = 0; i < s.s.size(); ++i) {
                if (s.s[i] == '{' && i + 1 < s.s.size() && s.s[i + 1] == '}' && ai < a.positional.size()) {
                    out += toStr(a.positional[ai]).s;
                    m = m || isMarked(a.positional[ai]);
                    ++ai;
                    ++i;
                } else {
                    out += s.s[i];
                }
            }
            return Value(Str::derived(out, m));
        });
    }
    runtimeError(line, "strings have no method '" + name + "'");
}

Value Evaluator::getAttr(const Value& obj, const std::string& name, int line)
{
    if (obj.isObject()) {
        Object& o = obj.obj();
        if (auto* v = o.find(name))
            return *v;
        if (o.isNamespace)
            return Value();
        if (name == "items" || name == "keys" || name == "values") {
            auto self = std::get<std::shared_ptr<Object>>(obj.v);
            return makeFn([self, name](const Args&) -> Value {
                Array out;
                for (auto& [k, v] : self->items) {
                    if (name == "items")
                        out.push_back(makeArray({Value(k), v}));
                    else if (name == "keys")
                        out.push_back(Value(k));
                    else
                        out.push_back(v);
                }
                return makeArray(std::move(out));
            });
        }
        if (name == "get") {
            auto self = std::get<std::shared_ptr<Object>>(obj.v);
            return makeFn([self](const Args& a) -> Value {
                if (a.positional.empty())
                    return Value();
                if (auto* v = self->find(toStr(a.positional[0]).s))
                    return *v;
                return a.positional.size() > 1 ? a.positional[1] : Value(None{});
            });
        }
        return Value();
    }
    if (obj.isString())
        return stringMethod(obj, name, line);
    if (obj.isArray()) {
        if (name == "append") {
            auto self = std::get<std::shared_ptr<Array>>(obj.v);
            return makeFn([self, line](const Args& a) -> Value {
                for (auto& x : a.positional) {
                    if (reaches(x, self.get()))
                        runtimeError(line, "a list cannot contain itself");
                    checkItems(self->size() + 1);
                    self->push_back(x);
                }
                return Value(None{});
            });
        }
        // numeric attribute access (x.0) is an index
        if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
            errno = 0;
            const long long i = std::strtoll(name.c_str(), nullptr, 10);
            if (errno == ERANGE)
                runtimeError(line, "index " + name + " does not fit in 64 bits");
            return getIndex(obj, Value(static_cast<int64_t>(i)), line);
        }
        return Value();
    }
    return Value(); // undefined.attr stays undefined, as HF's renderers treat missing fields
}

Value Evaluator::getIndex(const Value& obj, const Value& key, int line)
{
    if (obj.isArray()) {
        if (!key.isInt())
            runtimeError(line, "list index must be an integer");
        int64_t i = key.integer(), n = static_cast<int64_t>(obj.arr().size());
        if (i < 0)
            i += n;
        if (i < 0 || i >= n)
            return Value();
        return obj.arr()[static_cast<size_t>(i)];
    }
    if (obj.isObject()) {
        if (auto* v = obj.obj().find(toStr(key).s))
            return *v;
        return Value();
    }
    if (obj.isString()) {
        if (!key.isInt())
            runtimeError(line, "string index must be an integer");
        auto cps = unicode::splitCodepoints(obj.str().s);
        int64_t i = key.integer(), n = static_cast<int64_t>(cps.size());
        if (i < 0)
            i += n;
        if (i < 0 || i >= n)
            return Value();
        size_t byte = 0;
        for (int64_t k = 0; k < i; ++k)
            byte += cps[static_cast<size_t>(k)].size();
        return Value(obj.str().sub(byte, cps[static_cast<size_t>(i)].size()));
    }
    return Value();
}

int64_t lengthOf(const Value& v, int line)
{
    if (v.isArray())
        return static_cast<int64_t>(v.arr().size());
    if (v.isObject())
        return static_cast<int64_t>(v.obj().items.size());
    if (v.isString())
        return static_cast<int64_t>(unicode::splitCodepoints(v.str().s).size());
    if (v.isUndefined())
        return 0;
    runtimeError(line, "value has no length");
}

Value Evaluator::eval(const Expr& e, Scope& scope)
{
    const DepthGuard depth;
    switch (e.kind) {
    case Expr::Literal:
        return e.literal;
    case Expr::Var:
        return scope.lookup(e.name);
    case Expr::ListLit: {
        Array a;
        for (auto& k : e.kids)
            a.push_back(eval(*k, scope));
        return makeArray(std::move(a));
    }
    case Expr::DictLit: {
        Value o = makeObject();
        for (size_t i = 0; i + 1 < e.kids.size(); i += 2)
            o.obj().set(toStr(eval(*e.kids[i], scope)).s, eval(*e.kids[i + 1], scope));
        return o;
    }
    case Expr::Attr:
        return getAttr(eval(*e.kids[0], scope), e.name, e.line);
    case Expr::Index:
        return getIndex(eval(*e.kids[0], scope), eval(*e.kids[1], scope), e.line);
    case Expr::Slice: {
        Value base = eval(*e.kids[0], scope);
        auto part = [&](int k) -> std::optional<int64_t> {
            if (!e.kids[static_cast<size_t>(k)])
                return std::nullopt;
            Value v = eval(*e.kids[static_cast<size_t>(k)], scope);
            if (v.isNone())
                return std::nullopt;
            if (!v.isInt())
                runtimeError(e.line, "slice bounds must be integers");
            return v.integer();
        };
        auto start = part(1), stop = part(2), step = part(3);
        int64_t st = step.value_or(1);
        if (st == 0)
            runtimeError(e.line, "slice step cannot be zero");
        std::vector<size_t> starts; // for strings: code point byte offsets
        std::vector<std::string> cps;
        int64_t n;
        if (base.isArray())
            n = static_cast<int64_t>(base.arr().size());
        else if (base.isString()) {
            cps = unicode::splitCodepoints(base.str().s);
            n = static_cast<int64_t>(cps.size());
            size_t off = 0;
            for (auto& c : cps) {
                starts.push_back(off);
                off += c.size();
            }
        } else if (base.isUndefined() || base.isNone())
            return Value();
        else
            runtimeError(e.line, "value cannot be sliced");
        auto clamp = [&](std::optional<int64_t> v, int64_t def) {
            if (!v)
                return def;
            int64_t x = *v < 0 ? *v + n : *v;
            if (st > 0)
                return std::clamp<int64_t>(x, 0, n);
            return std::clamp<int64_t>(x, -1, n - 1);
        };
        int64_t b = clamp(start, st > 0 ? 0 : n - 1), en = clamp(stop, st > 0 ? n : -1);
        std::vector<int64_t> idx;
        for (int64_t i = b; st > 0 ? i < en : i > en;) {
            idx.push_back(i);
            if (__builtin_add_overflow(i, st, &i))
                break; // a step beyond the end (x[::2**62])
        }
        if (base.isArray()) {
            Array out;
            for (auto i : idx)
                out.push_back(base.arr()[static_cast<size_t>(i)]);
            return makeArray(std::move(out));
        }
        Str out;
        for (auto i : idx)
            out.append(base.str().sub(starts[static_cast<size_t>(i)], cps[static_cast<size_t>(i)].size()));
        return Value(out);
    }
    case Expr::Call: {
        Value f = eval(*e.kids[0], scope);
        if (!f.isCallable()) {
            std::string what = e.kids[0]->kind == Expr::Var ? "'" + e.kids[0]->name + "'"
                               : e.kids[0]->kind == Expr::Attr ? "method '" + e.kids[0]->name + "'"
                                                               : "value";
            runtimeError(e.line, what + " is not callable (unknown function or method)");
        }
        return f.fn().call(evalArgs(e, scope));
    }
    case Expr::Filter:
        return callFilter(e, scope);
    case Expr::Test:
        return runTest(e, scope);
    case Expr::Unary: {
        Value v = eval(*e.kids[0], scope);
        if (e.name == "not")
            return Value(!truthy(v));
        if (!v.isNumber())
            runtimeError(e.line, "unary " + e.name + " needs a number");
        if (e.name == "-")
        {
            if (!v.isInt())
                return Value(-v.num());
            if (v.integer() == INT64_MIN)
                runtimeError(e.line, "integer result does not fit in 64 bits");
            return Value(-v.integer());
        }
        return v;
    }
    case Expr::Ternary: {
        if (truthy(eval(*e.kids[0], scope)))
            return eval(*e.kids[1], scope);
        return e.kids[2] ? eval(*e.kids[2], scope) : Value();
    }
    case Expr::Binary: {
        const std::string& op = e.name;
        if (op == "and") {
            Value a = eval(*e.kids[0], scope);
            return truthy(a) ? eval(*e.kids[1], scope) : a;
        }
        if (op == "or") {
            Value a = eval(*e.kids[0], scope);
            return truthy(a) ? a : eval(*e.kids[1], scope);
        }
        Value a = eval(*e.kids[0], scope), b = eval(*e.kids[1], scope);
        if (op == "~") {
            Str s = toStr(a);
            s.append(toStr(b));
            return Value(s);
        }
        if (op == "==")
            return Value(equals(a, b));
        if (op == "!=")
            return Value(!equals(a, b));
        if (op == "in" || op == "not in") {
            bool found = false;
            if (b.isString()) {
                if (!a.isString())
                    runtimeError(e.line, "'in <string>' needs a string on the left");
                found = b.str().s.find(a.str().s) != std::string::npos;
            } else if (b.isArray()) {
                for (auto& x : b.arr())
                    found = found || equals(a, x);
            } else if (b.isObject()) {
                found = b.obj().find(toStr(a).s) != nullptr;
            } else if (!b.isUndefined() && !b.isNone()) {
                runtimeError(e.line, "'in' needs a string, list or mapping on the right");
            }
            return Value(op == "in" ? found : !found);
        }
        if (op == "<" || op == ">" || op == "<=" || op == ">=") {
            int cmp;
            if (a.isNumber() && b.isNumber())
                cmp = a.num() < b.num() ? -1 : a.num() > b.num() ? 1 : 0;
            else if (a.isString() && b.isString())
                cmp = a.str().s.compare(b.str().s);
            else
                runtimeError(e.line, "cannot compare these values with " + op);
            bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
            return Value(r);
        }
        if (op == "+") {
            if (a.isString() && b.isString()) {
                Str s = a.str();
                s.append(b.str());
                return Value(s);
            }
            if (a.isArray() && b.isArray()) {
                Array out = a.arr();
                out.insert(out.end(), b.arr().begin(), b.arr().end());
                return makeArray(std::move(out));
            }
        }
        if (op == "*" && ((a.isString() && b.isInt()) || (a.isInt() && b.isString()))) {
            const Value& s = a.isString() ? a : b;
            int64_t n = a.isInt() ? a.integer() : b.integer();
            // Checked before building: 'x' * 10**12 is refused at once, not after filling memory ('' * 10**18
            // is '' at once, not 10**18 empty appends).
            if (s.str().s.empty() || n <= 0)
                return Value(Str{});
            if (static_cast<uint64_t>(n) > kMaxStringBytes / s.str().s.size())
                checkStringSize(kMaxStringBytes + 1);
            Str out;
            for (int64_t i = 0; i < n; ++i)
                out.append(s.str());
            return Value(out);
        }
        if (!a.isNumber() || !b.isNumber())
            runtimeError(e.line, "operator " + op + " needs numbers (got " + pyRepr(a, true) + " and " + pyRepr(b, true) + ")");
        bool ints = a.isInt() && b.isInt();
        int64_t r = 0;
        if (op == "+" || op == "-" || op == "*") {
            if (!ints)
                return Value(op == "+" ? a.num() + b.num() : op == "-" ? a.num() - b.num() : a.num() * b.num());
            const bool overflow = op == "+"   ? __builtin_add_overflow(a.integer(), b.integer(), &r)
                                  : op == "-" ? __builtin_sub_overflow(a.integer(), b.integer(), &r)
                                              : __builtin_mul_overflow(a.integer(), b.integer(), &r);
            checkOverflow(overflow, e.line);
            return Value(r);
        }
        if (op == "/") {
            if (b.num() == 0)
                runtimeError(e.line, "division by zero");
            return Value(a.num() / b.num());
        }
        if (op == "//" || op == "%") {
            if (b.num() == 0)
                runtimeError(e.line, "division by zero");
            if (ints) {
                if (a.integer() == INT64_MIN && b.integer() == -1) {
                    if (op == "//") // -INT64_MIN does not fit; the remainder is 0
                        runtimeError(e.line, "integer result does not fit in 64 bits");
                    return Value(int64_t(0));
                }
                int64_t q = a.integer() / b.integer();
                r = a.integer() % b.integer();
                if (r != 0 && ((r < 0) != (b.integer() < 0))) {
                    --q;
                    r += b.integer();
                }
                return op == "//" ? Value(q) : Value(r);
            }
            double q = std::floor(a.num() / b.num());
            return op == "//" ? Value(q) : Value(a.num() - q * b.num());
        }
        if (op == "**") {
            if (!ints || b.integer() < 0)
                return Value(std::pow(a.num(), b.num()));
            // Exact, by squaring, with every product checked.
            int64_t base = a.integer(), exp = b.integer(), acc = 1;
            while (exp > 0) {
                if (exp & 1)
                    checkOverflow(__builtin_mul_overflow(acc, base, &acc), e.line);
                exp >>= 1;
                if (exp > 0)
                    checkOverflow(__builtin_mul_overflow(base, base, &base), e.line);
            }
            return Value(acc);
        }
        runtimeError(e.line, "unknown operator " + op);
    }
    }
    runtimeError(e.line, "bad expression");
}

bool testValue(const std::string& name, const Value& v, const Args& a, int line)
{
    if (name == "defined")
        return !v.isUndefined();
    if (name == "undefined")
        return v.isUndefined();
    if (name == "none")
        return v.isNone();
    if (name == "string")
        return v.isString();
    if (name == "number")
        return v.isNumber();
    if (name == "integer")
        return v.isInt();
    if (name == "float")
        return v.isFloat();
    if (name == "boolean")
        return v.isBool();
    if (name == "true")
        return v.isBool() && std::get<bool>(v.v);
    if (name == "false")
        return v.isBool() && !std::get<bool>(v.v);
    if (name == "mapping")
        return v.isObject();
    if (name == "iterable")
        return v.isArray() || v.isObject() || v.isString();
    if (name == "sequence")
        return v.isArray() || v.isString() || v.isObject();
    if (name == "callable")
        return v.isCallable();
    if (name == "even" || name == "odd") {
        if (!v.isInt())
            runtimeError(line, "test '" + name + "' needs an integer");
        return (v.integer() % 2 == 0) == (name == "even");
    }
    if (name == "divisibleby") {
        if (!v.isInt() || a.positional.empty() || !a.positional[0].isInt() || a.positional[0].integer() == 0)
            runtimeError(line, "test 'divisibleby' needs integers");
        const int64_t d = a.positional[0].integer();
        return d == -1 || v.integer() % d == 0; // (INT64_MIN % -1 traps)
    }
    if (name == "equalto" || name == "eq" || name == "sameas" || name == "==")
        return !a.positional.empty() && equals(v, a.positional[0]);
    if (name == "ne" || name == "!=")
        return a.positional.empty() || !equals(v, a.positional[0]);
    if (name == "in")
        return !a.positional.empty() && a.positional[0].isArray() &&
               std::any_of(a.positional[0].arr().begin(), a.positional[0].arr().end(), [&](auto& x) { return equals(v, x); });
    if (name == "lower" || name == "upper") {
        if (!v.isString())
            return false;
        return v.str().s == asciiCase(v.str().s, name == "lower" ? 0 : 1);
    }
    runtimeError(line, "unknown test '" + name + "'");
}

Value Evaluator::runTest(const Expr& e, Scope& scope)
{
    Value v = eval(*e.kids[0], scope);
    bool r = testValue(e.name, v, evalArgs(e, scope), e.line);
    return Value(e.negate ? !r : r);
}

Value Evaluator::callFilter(const Expr& e, Scope& scope)
{
    Value v = eval(*e.kids[0], scope);
    Args a = evalArgs(e, scope);
    const std::string& f = e.name;
    const int line = e.line;
    if (f == "trim") {
        const Value* chars = a.get(0, "chars");
        return Value(stripStr(toStr(v), chars && chars->isString() ? chars->str().s : "", true, true));
    }
    if (f == "length" || f == "count")
        return Value(lengthOf(v, line));
    if (f == "string")
        return Value(toStr(v));
    if (f == "upper" || f == "lower" || f == "title" || f == "capitalize")
        return stringMethod(Value(toStr(v)), f, line).fn().call({});
    if (f == "replace")
        return stringMethod(Value(toStr(v)), "replace", line).fn().call(a);
    if (f == "tojson") {
        const Value* ind = a.get(0, "indent");
        std::string out;
        const int64_t indent = ind && ind->isInt() ? ind->integer() : 0;
        if (indent < 0 || indent > 64)
            runtimeError(line, "tojson indent must be 0 to 64");
        dumpPython(toJson(v), out, static_cast<int>(indent), 0);
        return Value(Str::derived(out, isMarked(v)));
    }
    if (f == "safe" || f == "e" || f == "escape" || f == "forceescape")
        return f == "safe" ? v : Value(toStr(v)); // no autoescape in chat templates
    if (f == "default" || f == "d") {
        const Value* def = a.get(0, "default_value");
        const Value* boolean = a.get(1, "boolean");
        bool useDefault = v.isUndefined() || (boolean && truthy(*boolean) && !truthy(v));
        return useDefault ? (def ? *def : Value(Str{})) : v;
    }
    if (f == "first" || f == "last") {
        Array items = iterate(v, line);
        if (items.empty())
            return Value();
        return f == "first" ? items.front() : items.back();
    }
    if (f == "join") {
        const Value* sep = a.get(0, "d");
        Str s = sep ? toStr(*sep) : Str{};
        return stringMethod(Value(s), "join", line).fn().call(Args{{v}, {}});
    }
    if (f == "list")
        return makeArray(iterate(v, line));
    if (f == "reverse") {
        if (v.isString()) {
            auto cps = unicode::splitCodepoints(v.str().s);
            std::string out;
            for (auto it = cps.rbegin(); it != cps.rend(); ++it)
                out += *it;
            return Value(Str::derived(out, v.str().anyMarked()));
        }
        Array items = iterate(v, line);
        std::reverse(items.begin(), items.end());
        return makeArray(std::move(items));
    }
    if (f == "int") {
        if (v.isInt())
            return v;
        if (v.isFloat())
            return std::isfinite(v.num()) && std::fabs(v.num()) < 9.2e18 ? Value(static_cast<int64_t>(v.num())) : Value(int64_t(0));
        if (v.isString()) {
            try {
                return Value(static_cast<int64_t>(std::stoll(v.str().s)));
            } catch (...) {
                return Value(int64_t(0)); // Jinja's int filter: the default (0) for what does not convert
            }
        }
        return Value(int64_t(0));
    }
    if (f == "float") {
        if (v.isNumber())
            return Value(v.num());
        if (v.isString()) {
            try {
                return Value(std::stod(v.str().s));
            } catch (...) {
                return Value(0.0);
            }
        }
        return Value(0.0);
    }
    if (f == "abs") {
        if (!v.isNumber())
            runtimeError(line, "abs needs a number");
        if (v.isInt() && v.integer() == INT64_MIN)
            runtimeError(line, "integer result does not fit in 64 bits");
        return v.isInt() ? Value(static_cast<int64_t>(std::llabs(v.integer()))) : Value(std::fabs(v.num()));
    }
    if (f == "round") {
        const Value* prec = a.get(0, "precision");
        double p = std::pow(10.0, prec && prec->isInt() ? static_cast<double>(prec->integer()) : 0.0);
        if (!v.isNumber())
            runtimeError(line, "round needs a number");
        return Value(std::round(v.num() * p) / p);
    }
    if (f == "items") {
        if (!v.isObject())
            runtimeError(line, "items needs a mapping");
        return getAttr(v, "items", line).fn().call({});
    }
    if (f == "dictsort") {
        if (!v.isObject())
            runtimeError(line, "dictsort needs a mapping");
        Array items;
        for (auto& [k, x] : v.obj().items)
            items.push_back(makeArray({Value(k), x}));
        std::sort(items.begin(), items.end(), [](const Value& x, const Value& y) { return x.arr()[0].str().s < y.arr()[0].str().s; });
        return makeArray(std::move(items));
    }
    if (f == "unique") {
        Array out;
        for (auto& x : iterate(v, line)) {
            chargeIterations(static_cast<int64_t>(out.size())); // comparisons: quadratic in the list's length
            if (std::none_of(out.begin(), out.end(), [&](auto& y) { return equals(x, y); }))
                out.push_back(x);
        }
        return makeArray(std::move(out));
    }
    if (f == "sort") {
        Array items = iterate(v, line);
        const Value* attr = a.kw("attribute");
        const Value* rev = a.get(0, "reverse");
        auto key = [&](const Value& x) { return attr ? getAttr(x, toStr(*attr).s, line) : x; };
        std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
            Value kx = key(x), ky = key(y);
            if (kx.isNumber() && ky.isNumber())
                return kx.num() < ky.num();
            return toStr(kx).s < toStr(ky).s;
        });
        if (rev && truthy(*rev))
            std::reverse(items.begin(), items.end());
        return makeArray(std::move(items));
    }
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject") {
        bool isAttr = f == "selectattr" || f == "rejectattr";
        bool keep = f == "selectattr" || f == "select";
        size_t ti = isAttr ? 1 : 0;
        std::string attrName = isAttr && !a.positional.empty() ? toStr(a.positional[0]).s : "";
        std::string test = a.positional.size() > ti ? toStr(a.positional[ti]).s : "";
        Args testArgs;
        for (size_t i = ti + 1; i < a.positional.size(); ++i)
            testArgs.positional.push_back(a.positional[i]);
        Array out;
        for (auto& x : iterate(v, line)) {
            Value subject = isAttr ? getAttr(x, attrName, line) : x;
            bool r = test.empty() ? truthy(subject) : testValue(test, subject, testArgs, line);
            if (r == keep)
                out.push_back(x);
        }
        return makeArray(std::move(out));
    }
    if (f == "map") {
        const Value* attr = a.kw("attribute");
        Array out;
        for (auto& x : iterate(v, line)) {
            if (attr) {
                Value r = getAttr(x, toStr(*attr).s, line);
                if (r.isUndefined())
                    if (const Value* d = a.kw("default"))
                        r = *d;
                out.push_back(r);
            } else if (!a.positional.empty()) {
                Expr fe;
                fe.kind = Expr::Filter;
                fe.line = line;
                fe.name = toStr(a.positional[0]).s;
                Scope tmp(&scope);
                tmp.set("__item", x);
                auto var = std::make_unique<Expr>();
                var->kind = Expr::Var;
                var->name = "__item";
                fe.kids.push_back(std::move(var));
                out.push_back(callFilter(fe, tmp));
            } else {
                out.push_back(x);
            }
        }
        return makeArray(std::move(out));
    }
    if (f == "indent") {
        const Value* w = a.get(0, "width");
        const Value* firstV = a.get(1, "first");
        const Value* blankV = a.get(2, "blank");
        const int64_t width = w && w->isInt() ? w->integer() : 4;
        if (!(w && w->isString()) && (width < 0 || width > 1024))
            runtimeError(line, "indent width must be 0 to 1024");
        std::string pad = w && w->isString() ? w->str().s : std::string(static_cast<size_t>(width), ' ');
        bool first = firstV && truthy(*firstV), blank = blankV && truthy(*blankV);
        Str s = toStr(v);
        std::string out;
        size_t lineStart = 0;
        bool isFirst = true;
        while (lineStart <= s.s.size()) {
            size_t nl = s.s.find('\n', lineStart);
            std::string ln = s.s.substr(lineStart, nl == std::string::npos ? std::string::npos : nl - lineStart);
            if ((!isFirst || first) && (blank || !ln.empty()))
                out += pad;
            out += ln;
            checkStringSize(out.size()); // (padding every line of a long text multiplies it)
            if (nl == std::string::npos)
                break;
            out += '\n';
            lineStart = nl + 1;
            isFirst = false;
        }
        return Value(Str::derived(out, s.anyMarked()));
    }
    if (f == "wordcount") {
        Value parts = stringMethod(Value(toStr(v)), "split", line).fn().call({});
        return Value(static_cast<int64_t>(parts.arr().size()));
    }
    runtimeError(line, "unknown filter '" + f + "'");
}

void Evaluator::execNode(const Node& n, Scope& scope)
{
    const DepthGuard depth;
    switch (n.kind) {
    case Node::Text:
        m_out.append(Str{n.text, {}});
        return;
    case Node::Output: {
        Value v = eval(*n.expr, scope);
        m_out.append(toStr(v));
        return;
    }
    case Node::If:
        for (auto& [cond, body] : n.branches) {
            if (!cond || truthy(eval(*cond, scope))) {
                exec(body, scope);
                return;
            }
        }
        return;
    case Node::For: {
        Value iterable = eval(*n.expr, scope);
        Array all = iterate(iterable, n.line);
        chargeIterations(static_cast<int64_t>(all.size())); // items a loop's `if` skips cost a test each too
        Array items;
        // `for x in xs if cond`: filter first so that loop.index/length count only kept items
        for (auto& x : all) {
            if (n.filterCond) {
                Scope probe(&scope);
                if (n.targets.size() == 1)
                    probe.set(n.targets[0], x);
                else if (x.isArray())
                    for (size_t k = 0; k < n.targets.size() && k < x.arr().size(); ++k)
                        probe.set(n.targets[k], x.arr()[k]);
                if (!truthy(eval(*n.filterCond, probe)))
                    continue;
            }
            items.push_back(x);
        }
        if (items.empty()) {
            exec(n.elseBody, scope);
            return;
        }
        const int64_t len = static_cast<int64_t>(items.size());
        // Jinja scoping: variables set inside a loop body do not leak out, except through namespaces.
        for (int64_t i = 0; i < len; ++i) {
            Scope inner(&scope);
            const Value& x = items[static_cast<size_t>(i)];
            if (n.targets.size() == 1) {
                inner.set(n.targets[0], x);
            } else {
                if (!x.isArray() || x.arr().size() != n.targets.size())
                    runtimeError(n.line, "cannot unpack loop item into " + std::to_string(n.targets.size()) + " names");
                for (size_t k = 0; k < n.targets.size(); ++k)
                    inner.set(n.targets[k], x.arr()[k]);
            }
            Value loop = makeObject();
            Object& lo = loop.obj();
            lo.set("index", Value(i + 1));
            lo.set("index0", Value(i));
            lo.set("revindex", Value(len - i));
            lo.set("revindex0", Value(len - i - 1));
            lo.set("first", Value(i == 0));
            lo.set("last", Value(i == len - 1));
            lo.set("length", Value(len));
            lo.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value());
            lo.set("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value());
            lo.set("cycle", makeFn([i](const Args& a) -> Value {
                       if (a.positional.empty())
                           return Value();
                       return a.positional[static_cast<size_t>(i) % a.positional.size()];
                   }));
            inner.set("loop", loop);
            try {
                exec(n.body, inner);
            } catch (const BreakSignal&) {
                break;
            } catch (const ContinueSignal&) {
                continue;
            }
        }
        return;
    }
    case Node::Set: {
        Value v = eval(*n.expr, scope);
        if (!n.attrTarget.empty()) {
            Value target = scope.lookup(n.targets[0]);
            if (!target.isObject() || !target.obj().isNamespace)
                runtimeError(n.line, "'" + n.targets[0] + "' is not a namespace; only namespace attributes can be set");
            if (reaches(v, &target.obj()))
                runtimeError(n.line, "a namespace cannot contain itself");
            target.obj().set(n.attrTarget, v);
            return;
        }
        if (n.targets.size() == 1) {
            scope.set(n.targets[0], v);
            return;
        }
        if (!v.isArray() || v.arr().size() != n.targets.size())
            runtimeError(n.line, "cannot unpack value into " + std::to_string(n.targets.size()) + " names");
        for (size_t k = 0; k < n.targets.size(); ++k)
            scope.set(n.targets[k], v.arr()[k]);
        return;
    }
    case Node::SetBlock: {
        Str captured;
        Evaluator sub(captured);
        sub.exec(n.body, scope);
        scope.set(n.targets[0], Value(captured));
        return;
    }
    case Node::Macro: {
        const Node* node = &n;
        std::shared_ptr<Scope> defScope = scope.snapshot();
        if (t_budget)
            t_budget->captured.push_back(defScope);
        scope.set(n.targets[0], makeFn([node, defScope](const Args& a) -> Value {
                      const DepthGuard call(true);
                      chargeIterations(1); // calls count like iterations: f(f) twice per call is 2^depth calls
                      Scope local(defScope.get());
                      for (size_t k = 0; k < node->params.size(); ++k) {
                          const auto& [pname, def] = node->params[k];
                          if (const Value* v = a.get(k, pname))
                              local.set(pname, *v);
                          else if (def) {
                              Str dummy;
                              Evaluator ev(dummy);
                              local.set(pname, ev.eval(*def, local));
                          }
                      }
                      Str out;
                      Evaluator ev(out);
                      ev.exec(node->body, local);
                      return Value(out);
                  }));
        return;
    }
    case Node::Break:
        throw BreakSignal{};
    case Node::Continue:
        throw ContinueSignal{};
    case Node::CallBlock:
        exec(n.body, scope);
        return;
    }
}

Value markMessages(const json& messages, const std::vector<std::string>& keys)
{
    // Strings under untrusted keys (at any depth) are marked; everything else is template-side data.
    std::function<Value(const json&, bool)> conv = [&](const json& j, bool mark) -> Value {
        if (j.is_object()) {
            auto o = std::make_shared<Object>();
            for (auto& [k, x] : j.items())
                o->items.emplace_back(k, conv(x, mark || std::find(keys.begin(), keys.end(), k) != keys.end()));
            return Value(o);
        }
        if (j.is_array()) {
            Array a;
            for (auto& x : j)
                a.push_back(conv(x, mark));
            return makeArray(std::move(a));
        }
        return fromJson(j, mark);
    };
    return conv(messages, false);
}

} // namespace

struct Template::Impl {
    Body body;
};

Template::Template(const std::string& source)
    : m(std::make_unique<Impl>())
{
    try {
        TemplateParser p(lex(source));
        m->body = p.parseAll();
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        // A case the checks above missed (a wrong-type access, a conversion out of range) is still an error
        // about this template, never an exception its callers do not expect.
        throw Error(std::string("chat template: cannot parse: ") + e.what());
    }
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;

MarkedText Template::render(const json& context, const std::vector<std::string>& untrustedMessageKeys) const
{
    // This render's limits (see the top of this file), for every evaluator it makes on this thread.
    RenderBudget budget;
    struct Active {
        RenderBudget* saved;
        RenderBudget& mine;
        ~Active()
        {
            t_budget = saved;
            for (auto& s : mine.captured)
                s->clear();
        }
    } active{t_budget, budget};
    t_budget = &budget;
    Scope globals;
    globals.set("raise_exception", makeFn([](const Args& a) -> Value {
                    throw Error("chat template raised an error: " + (a.positional.empty() ? std::string() : toStr(a.positional[0]).s));
                }));
    globals.set("namespace", makeFn([](const Args& a) -> Value {
                    Value ns = makeObject();
                    ns.obj().isNamespace = true;
                    if (!a.positional.empty() && a.positional[0].isObject())
                        for (auto& [k, v] : a.positional[0].obj().items)
                            ns.obj().set(k, v);
                    for (auto& [k, v] : a.keyword)
                        ns.obj().set(k, v);
                    return ns;
                }));
    globals.set("range", makeFn([](const Args& a) -> Value {
                    int64_t start = 0, stop = 0, step = 1;
                    auto num = [](const Value& v) {
                        if (!v.isNumber())
                            limitError("range() needs numbers");
                        return v.isInt() ? v.integer() : floatToInt(v.num(), 0);
                    };
                    if (a.positional.size() == 1)
                        stop = num(a.positional[0]);
                    else if (a.positional.size() >= 2) {
                        start = num(a.positional[0]);
                        stop = num(a.positional[1]);
                        if (a.positional.size() > 2)
                            step = num(a.positional[2]);
                    }
                    if (step == 0)
                        throw Error("chat template: range() step cannot be zero");
                    // The length first (in 128 bits: stop - start can overflow 64), refused beyond the limit as
                    // Jinja's sandbox does, so range(10**12) costs nothing.
                    const __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
                    const __int128 absStep = step > 0 ? static_cast<__int128>(step) : -static_cast<__int128>(step);
                    const __int128 count = span <= 0 ? 0 : (span + absStep - 1) / absStep;
                    if (count > kMaxRange)
                        limitError("range() of more than " + std::to_string(kMaxRange) + " items (the limit)");
                    Array out;
                    for (int64_t k = 0; k < static_cast<int64_t>(count); ++k)
                        out.push_back(Value(static_cast<int64_t>(start + static_cast<__int128>(k) * step))); // within [start, stop)
                    return makeArray(std::move(out));
                }));
    globals.set("dict", makeFn([](const Args& a) -> Value {
                    Value o = makeObject();
                    for (auto& [k, v] : a.keyword)
                        o.obj().set(k, v);
                    return o;
                }));
    globals.set("strftime_now", makeFn([](const Args& a) -> Value {
                    std::string fmt = a.positional.empty() ? "%Y-%m-%d" : toStr(a.positional[0]).s;
                    std::time_t t = std::time(nullptr);
                    std::tm tm{};
                    localtime_r(&t, &tm);
                    char buf[256];
                    size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
                    return Value(std::string(buf, n));
                }));
    Scope scope(&globals);
    if (context.is_object()) {
        for (auto& [k, v] : context.items()) {
            if (k == "messages")
                scope.set(k, markMessages(v, untrustedMessageKeys));
            else
                scope.set(k, fromJson(v, false));
        }
    }
    Str out;
    Evaluator ev(out);
    try {
        ev.exec(m->body, scope);
    } catch (const BreakSignal&) {
        throw Error("chat template: 'break' outside a loop");
    } catch (const ContinueSignal&) {
        throw Error("chat template: 'continue' outside a loop");
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(std::string("chat template: cannot render: ") + e.what()); // (see the constructor)
    }
    MarkedText r;
    r.text = std::move(out.s);
    r.untrusted = out.mark;
    r.untrusted.resize(r.text.size(), false);
    return r;
}

} // namespace together::jinja
