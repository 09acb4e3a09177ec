// SPDX-License-Identifier: MIT
// Chat templates: the parser. Tokens -> statement and expression trees, with the nesting limits.
#include "text/jinja/internal.h"

#include <cerrno>
#include <cstdlib>

namespace together::jinja::detail {

// Nesting limits: a tree deeper than these would make the recursive parser, the evaluator and the tree's
// own destruction overflow the stack.
constexpr int kMaxExprDepth = 200;  // depth of an expression's tree: (((…))), a+a+…, x.y.z…
constexpr int kMaxBlockDepth = 100; // statements nested in statements

namespace {

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

} // namespace

Body parse(std::vector<Segment> segs)
{
    TemplateParser p(std::move(segs));
    return p.parseAll();
}

} // namespace together::jinja::detail
